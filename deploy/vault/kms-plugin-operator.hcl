# kms-plugin: the operator's policy (kmsctl vault) for transit key "kms-plugin" at mount "transit".

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

# kmsctl vault rotate.
path "transit/keys/kms-plugin/rotate" {
  capabilities = ["update"]
}

# kmsctl vault retire (min_decryption_version).
path "transit/keys/kms-plugin/config" {
  capabilities = ["update"]
}

