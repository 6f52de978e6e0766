#!/usr/bin/env bash
# Sets up AppRole login for kms-plugin and writes the role_id and a fresh
# secret_id into a directory (mode 0600 files) for the control-plane node:
#
#   VAULT_ADDR=... VAULT_TOKEN=<admin token> \
#     deploy/vault/setup-approle.sh /etc/kubernetes/kms-plugin/vault
#
# Then run the plugin with
#   --vault-auth approle
#   --vault-role-id-file  /etc/kubernetes/kms-plugin/vault/role-id
#   --vault-secret-id-file /etc/kubernetes/kms-plugin/vault/secret-id
#
# Tokens live 1 h and are renewed by the plugin up to 24 h; then it logs in
# again with the secret_id, which does not expire here (secret_id_ttl=0):
# rotate it by running this script again and restarting nothing (the
# plugin reads the files at every login). Pin logins to the control-plane
# network with SECRET_ID_BOUND_CIDRS (comma-separated).
set -euo pipefail

out=${1:?usage: $0 OUTPUT_DIR}
mount=${APPROLE_MOUNT:-approle}
role=${APPROLE_ROLE:-kms-plugin}

# Read the whole list, then match. Piping it into a reader that exits at
# the first match (grep -q) lets vault hit a closed pipe and die of SIGPIPE,
# which pipefail reports as "not there": the mount would be enabled twice.
# A failed list stops the script (set -e) instead of passing for "absent".
mounts=$(vault auth list -format=json)
if [[ $mounts != *"\"$mount/\""* ]]; then
  vault auth enable -path="$mount" approle
fi
vault write "auth/$mount/role/$role" \
  token_policies=kms-plugin \
  token_ttl=1h token_max_ttl=24h \
  token_no_default_policy=false \
  secret_id_ttl=0 secret_id_num_uses=0 \
  ${SECRET_ID_BOUND_CIDRS:+secret_id_bound_cidrs="$SECRET_ID_BOUND_CIDRS"} \
  ${SECRET_ID_BOUND_CIDRS:+token_bound_cidrs="$SECRET_ID_BOUND_CIDRS"}

umask 077
mkdir -p "$out"
vault read -field=role_id "auth/$mount/role/$role/role-id" >"$out/role-id.tmp"
vault write -f -field=secret_id "auth/$mount/role/$role/secret-id" >"$out/secret-id.tmp"
mv "$out/role-id.tmp" "$out/role-id"
mv "$out/secret-id.tmp" "$out/secret-id"
echo "wrote $out/role-id and $out/secret-id (0600)" >&2
