#!/usr/bin/env bash
# Builds the real servers that kms-plugin's integration and end-to-end tests
# run against (etcd, etcdctl, kube-apiserver, kube-controller-manager, vault)
# from the Go module proxy, once per version, into a cache outside the
# repository. Prints nothing but progress on stderr; prints the directory
# holding the named tool's binaries on stdout (the cache root for "all").
#
#   test/tools/build.sh [etcd|kube-apiserver|kube-controller-manager|vault|all]
#
# Cache: $KMS_PLUGIN_TOOLS_CACHE, default ~/.cache/kms-plugin/tools/<name>-<version>/.
# A binary is rebuilt only when its directory lacks it; delete the directory
# to force a rebuild.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KMS_PLUGIN_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kms-plugin/tools}

ETCD_VERSION=v3.6.16
KUBE_VERSION=v1.37.2
VAULT_VERSION=v1.19.5

log() { echo "tools: $*" >&2; }

# build NAME OUT PKG [LDFLAGS]: go build PKG from the tools module NAME into OUT,
# writing to a temporary name first so that an interrupted build never leaves
# a truncated binary in the cache.
build() {
  local mod=$1 out=$2 pkg=$3 ldflags=${4:-}
  if [ -x "$out" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$out")"
  log "building $(basename "$out") from $pkg (first run only; cached in $(dirname "$out"))"
  local start=$SECONDS
  (
    cd "$here/$mod"
    export GOFLAGS=-mod=mod CGO_ENABLED=0
    # The servers are test fixtures, never shipped: they build with the
    # machine's own Go, as they were validated, not with the toolchain
    # that go.mod pins for kms-plugin's release binaries.
    export GOTOOLCHAIN=${KMS_PLUGIN_SERVERS_TOOLCHAIN:-local}
    # The checksum database lacks two of Vault's plugin modules; their
    # hashes are pinned in this module's go.sum instead.
    export GONOSUMDB=github.com/hashicorp/vault-plugin-database-snowflake,github.com/hashicorp/vault-plugin-secrets-openldap
    go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg"
  )
  mv "$out.tmp" "$out"
  log "built $(basename "$out") in $((SECONDS - start))s"
}

etcd() {
  local dir=$cache/etcd-$ETCD_VERSION
  build etcd "$dir/etcd" go.etcd.io/etcd/server/v3
  build etcd "$dir/etcdctl" go.etcd.io/etcd/etcdctl/v3
  out=$dir
}

# kube NAME: build k8s.io/kubernetes/cmd/NAME at KUBE_VERSION from the
# kube-apiserver tools module, which pins every Kubernetes command the tests
# run, so that they all come from one release.
kube() {
  local name=$1 dir=$cache/$1-$KUBE_VERSION minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  build kube-apiserver "$dir/$name" "k8s.io/kubernetes/cmd/$name" \
    "-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  out=$dir
}

vault() {
  build vault "$cache/vault-$VAULT_VERSION/vault" github.com/hashicorp/vault
  out=$cache/vault-$VAULT_VERSION
}

out=$cache
case ${1:-all} in
  etcd) etcd ;;
  kube-apiserver|kube-controller-manager) kube "$1" ;;
  vault) vault ;;
  all) etcd; kube kube-apiserver; kube kube-controller-manager; vault; out=$cache ;;
  *) echo "usage: $0 [etcd|kube-apiserver|kube-controller-manager|vault|all]" >&2; exit 2 ;;
esac
echo "$out"
