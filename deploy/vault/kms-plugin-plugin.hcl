# kms-plugin: the KMS plugin's policy for transit key "kms-plugin" at mount "transit".
# No "create": encrypting must never recreate a deleted key.

# Wrap DEK seeds.
path "transit/encrypt/kms-plugin" {
  capabilities = ["update"]
}

# Unwrap DEK seeds.
path "transit/decrypt/kms-plugin" {
  capabilities = ["update"]
}

# Read versions and creation times (key_id) and min_decryption_version.
path "transit/keys/kms-plugin" {
  capabilities = ["read"]
}

