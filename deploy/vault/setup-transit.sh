#!/usr/bin/env bash
# Prepares Vault for kms-plugin: the transit engine, the key, and the
# plugin and operator policies (the .hcl files beside this script).
#
#   VAULT_ADDR=https://vault.example:8200 VAULT_TOKEN=<admin token> \
#     deploy/vault/setup-transit.sh [key-name] [transit-mount]
#
# Idempotent: an existing mount or key is left as it is. For another mount
# or key name, print matching policies with
# "kmsctl vault policy --vault-mount M --vault-key K [--role operator]".
set -euo pipefail

key=${1:-kms-plugin}
mount=${2:-transit}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Read the whole list, then match. Piping it into a reader that exits at
# the first match (grep -q) lets vault hit a closed pipe and die of SIGPIPE,
# which pipefail reports as "not there": the mount would be enabled twice.
# A failed list stops the script (set -e) instead of passing for "absent".
mounts=$(vault secrets list -format=json)
if [[ $mounts != *"\"$mount/\""* ]]; then
  vault secrets enable -path="$mount" transit
fi
if ! vault read -format=json "$mount/keys/$key" >/dev/null 2>&1; then
  # aes256-gcm96 (the default) supports associated data, which kms-plugin
  # binds to every ciphertext. Not exportable, no plaintext backup.
  vault write -f "$mount/keys/$key" type=aes256-gcm96
fi

if [ "$key" = kms-plugin ] && [ "$mount" = transit ]; then
  vault policy write kms-plugin "$here/kms-plugin-plugin.hcl"
  vault policy write kms-plugin-operator "$here/kms-plugin-operator.hcl"
else
  kmsctl vault policy --role plugin --vault-mount "$mount" --vault-key "$key" | vault policy write kms-plugin -
  kmsctl vault policy --role operator --vault-mount "$mount" --vault-key "$key" | vault policy write kms-plugin-operator -
fi
echo "transit key $mount/$key and policies kms-plugin, kms-plugin-operator are in place" >&2
