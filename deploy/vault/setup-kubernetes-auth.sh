#!/usr/bin/env bash
# Sets up Kubernetes auth for kms-plugin: Vault validates the plugin's
# service account JWT with the cluster's TokenReview API.
#
#   VAULT_ADDR=... VAULT_TOKEN=<admin token> \
#   KUBERNETES_HOST=https://<apiserver>:6443 KUBERNETES_CA=/etc/kubernetes/pki/ca.crt \
#     deploy/vault/setup-kubernetes-auth.sh
#
# Read docs/vault.md first: a static pod cannot mount a service account
# token, and Vault must reach the very apiserver whose secrets the plugin
# unlocks, so this fits a plugin that runs as a regular pod or with a
# token file that the node keeps fresh. Vault uses its own JWT (when it
# runs in the cluster) or the reviewer token given as TOKEN_REVIEWER_JWT
# for TokenReview calls; that account needs system:auth-delegator.
#
# Then run the plugin with
#   --vault-auth kubernetes --vault-role kms-plugin
#   [--vault-jwt-file /path/to/token]   (default: the pod's service account token)
set -euo pipefail

: "${KUBERNETES_HOST:?set KUBERNETES_HOST}"
mount=${K8S_AUTH_MOUNT:-kubernetes}
sa=${SERVICE_ACCOUNT:-kms-plugin}
ns=${SERVICE_ACCOUNT_NAMESPACE:-kube-system}
audience=${AUDIENCE:-vault}

# Read the whole list, then match. Piping it into a reader that exits at
# the first match (grep -q) lets vault hit a closed pipe and die of SIGPIPE,
# which pipefail reports as "not there": the mount would be enabled twice.
# A failed list stops the script (set -e) instead of passing for "absent".
mounts=$(vault auth list -format=json)
if [[ $mounts != *"\"$mount/\""* ]]; then
  vault auth enable -path="$mount" kubernetes
fi
args=(kubernetes_host="$KUBERNETES_HOST")
[ -n "${KUBERNETES_CA:-}" ] && args+=(kubernetes_ca_cert=@"$KUBERNETES_CA")
[ -n "${TOKEN_REVIEWER_JWT:-}" ] && args+=(token_reviewer_jwt="$TOKEN_REVIEWER_JWT")
vault write "auth/$mount/config" "${args[@]}"

vault write "auth/$mount/role/kms-plugin" \
  bound_service_account_names="$sa" \
  bound_service_account_namespaces="$ns" \
  audience="$audience" \
  token_policies=kms-plugin \
  token_ttl=1h token_max_ttl=24h
echo "kubernetes auth role kms-plugin bound to $ns/$sa (audience $audience)" >&2
