#!/usr/bin/env bash
# Runs kms-plugin's end-to-end suite (test/e2e) against a kind cluster:
# builds the image, creates the cluster from deploy/kind/cluster.yaml, loads
# the image, starts the plugin as a static pod, switches kube-apiserver to
# encrypt Secrets through it, rewrites existing Secrets, and runs the tests
# with KMS_E2E_* pointing at the cluster. Needs docker, kind, kubectl, go.
#
#   deploy/kind/e2e.sh                 # create, test, delete
#   KEEP_CLUSTER=1 deploy/kind/e2e.sh  # leave the cluster up afterwards
#
# Environment: IMAGE (default kms-plugin:e2e), KIND_CLUSTER_NAME (default
# kms-plugin-e2e), KIND_NODE_IMAGE
# (kindest/node image, Kubernetes 1.34 or later), GO_TEST_FLAGS (extra flags
# for go test, e.g. "-run TestRotation -v").
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster=${KIND_CLUSTER_NAME:-kms-plugin-e2e}
image=${IMAGE:-kms-plugin:e2e}
work=/tmp/kms-plugin-kind # the hostPaths in cluster.yaml
node=$cluster-control-plane
uid=65532 # the plugin's user in deploy/static-pod/kms-plugin.yaml
sock=/var/run/kms-plugin/kms.sock
keyring=/etc/kubernetes/kms-plugin/keyring.json

log() { echo "e2e.sh: $*" >&2; }
in_node() { docker exec "$node" "$@"; }
as_plugin() { docker exec -u "$uid:$uid" "$node" "$@"; }

for tool in docker kind kubectl go; do
  command -v "$tool" >/dev/null || { log "$tool is required"; exit 1; }
done

log "building $image"
docker build -t "$image" --build-arg "VERSION=$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo e2e)" "$root"

rm -rf "$work"
mkdir -p "$work/encryption" "$work/manifests" "$work/etcd"
cp "$root/deploy/encryption-config/identity-to-kms.yaml" "$work/encryption/config.yaml"
sed "s|^\([[:space:]]*image:\).*|\1 $image|" "$root/deploy/static-pod/kms-plugin.yaml" >"$work/manifests/kms-plugin.yaml"

if [ "${KEEP_CLUSTER:-}" != 1 ]; then
  trap 'log "deleting cluster $cluster"; kind delete cluster --name "$cluster" >/dev/null 2>&1 || true' EXIT
fi
log "creating cluster $cluster"
kind create cluster --name "$cluster" --config "$root/deploy/kind/cluster.yaml" \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --kubeconfig "$work/kubeconfig" --wait 3m
export KUBECONFIG=$work/kubeconfig

# The suite needs KMS v2 and automatic EncryptionConfiguration reloads as
# Kubernetes 1.34 ships them; an older node image fails later, obscurely.
minor=$(kubectl version -o json | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | tail -1)
if [ -z "$minor" ] || [ "$minor" -lt 34 ]; then
  log "the node runs Kubernetes 1.${minor:-?}; the suite needs 1.34 or later: set KIND_NODE_IMAGE to a newer kindest/node"
  exit 1
fi

log "loading $image into the node"
kind load docker-image "$image" --name "$cluster"

# kmsctl runs on the node as the plugin's user, the way an operator rotates
# keys on a control-plane host; take it from the image just built.
cid=$(docker create "$image")
docker cp "$cid:/usr/local/bin/kmsctl" "$work/kmsctl"
docker rm "$cid" >/dev/null
docker cp "$work/kmsctl" "$node:/usr/local/bin/kmsctl"

log "preparing the socket and keyring directories, creating the keyring"
in_node sh -c "mkdir -p /var/run/kms-plugin /etc/kubernetes/kms-plugin &&
  chown $uid:$uid /var/run/kms-plugin /etc/kubernetes/kms-plugin &&
  chmod 0750 /var/run/kms-plugin && chmod 0700 /etc/kubernetes/kms-plugin"
as_plugin kmsctl keyring init --keyring "$keyring"

log "starting kms-plugin as a static pod"
in_node cp /etc/kms-plugin-manifests/kms-plugin.yaml /etc/kubernetes/manifests/kms-plugin.yaml
for i in $(seq 1 90); do
  if as_plugin kmsctl status --endpoint "unix://$sock" >/dev/null 2>&1; then break; fi
  [ "$i" = 90 ] && { log "kms-plugin did not answer Status"; in_node crictl ps -a; exit 1; }
  sleep 2
done
as_plugin kmsctl status --endpoint "unix://$sock"

log "switching kube-apiserver to encrypt Secrets with kms-plugin"
reloads() {
  kubectl get --raw /metrics | awk '/^apiserver_encryption_config_controller_automatic_reloads_total\{.*status="success"/ {s += $2} END {print s + 0}'
}
before=$(reloads)
cp "$root/deploy/encryption-config/local.yaml" "$work/encryption/config.yaml.new"
mv "$work/encryption/config.yaml.new" "$work/encryption/config.yaml"
for i in $(seq 1 60); do
  [ "$(reloads)" -gt "$before" ] && break
  [ "$i" = 60 ] && { log "kube-apiserver did not reload the EncryptionConfiguration"; exit 1; }
  sleep 5
done
kubectl get --raw /healthz/kms-providers >/dev/null

log "rewriting existing Secrets under kms-plugin, and proving it from etcd"
in_node kmsctl migrate --kubeconfig /etc/kubernetes/admin.conf --resources secrets -q >/dev/null
in_node kmsctl verify --cacert /etc/kubernetes/pki/etcd/ca.crt \
  --cert /etc/kubernetes/pki/apiserver-etcd-client.crt --key /etc/kubernetes/pki/apiserver-etcd-client.key \
  --resources secrets --expect-provider kms-plugin -q >/dev/null

log "copying etcd client credentials"
docker cp "$node:/etc/kubernetes/pki/etcd/ca.crt" "$work/etcd/ca.crt"
docker cp "$node:/etc/kubernetes/pki/apiserver-etcd-client.crt" "$work/etcd/client.crt"
docker cp "$node:/etc/kubernetes/pki/apiserver-etcd-client.key" "$work/etcd/client.key"

export KMS_E2E_KUBECONFIG=$work/kubeconfig
export KMS_E2E_ETCD_ENDPOINTS=https://127.0.0.1:23790
export KMS_E2E_ETCD_CA=$work/etcd/ca.crt
export KMS_E2E_ETCD_CERT=$work/etcd/client.crt
export KMS_E2E_ETCD_KEY=$work/etcd/client.key
export KMS_E2E_PROVIDER_NAME=kms-plugin
export KMS_E2E_ENCRYPTED_RESOURCES=secrets
export KMS_E2E_KMSCTL="docker exec -u $uid:$uid $node kmsctl"
export KMS_E2E_PLUGIN_ENDPOINT=unix://$sock
export KMS_E2E_KEYRING=$keyring
# crictl stop --timeout 0 kills the container with SIGKILL; the kubelet
# restarts static pods by itself.
export KMS_E2E_KILL_PLUGIN="docker exec $node sh -c 'crictl ps -q --name kms-plugin | xargs -r crictl stop --timeout 0'"
export KMS_E2E_RESTART_APISERVER="docker exec $node sh -c 'crictl ps -q --name kube-apiserver | xargs -r crictl stop'"

log "running the e2e suite against $cluster"
cd "$root"
# shellcheck disable=SC2086 # GO_TEST_FLAGS is a list of flags
go test -tags e2e -count=1 -timeout 40m ${GO_TEST_FLAGS:-} ./test/e2e/...
