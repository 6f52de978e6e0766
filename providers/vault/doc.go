// Package vault is the kms-plugin provider whose key-encryption key lives
// in the transit secrets engine of HashiCorp Vault (or OpenBao) and never
// leaves it.
//
// Encrypt sends the DEK seed to transit/encrypt/<key> with the exact key
// version named by the envelope's key reference, and binds the kms
// envelope header and the key_id as transit associated_data. The stored
// ciphertext is transit's output without its "vault:vN:" prefix and
// base64; Decrypt rebuilds the string from the version.
//
// The key_id is "vault:[<namespace>/]<mount>/<key>:v<N>:<unix seconds>",
// where the last field is the creation time of version N as transit
// reports it. It is public, stable for the life of the version, and not
// reused when a key is deleted and recreated under the same name.
//
// Key metadata is read at start and every --vault-refresh-interval, so a
// rotation done elsewhere becomes the current key without a restart.
// Tokens are renewed at two thirds of their TTL, and the provider logs in
// again when renewal fails or Vault denies a request with a revoked token.
// Errors are classified once (classify) onto the providers sentinels;
// transient ones are retried with backoff inside the caller's deadline.
package vault
