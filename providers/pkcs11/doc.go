// Package pkcs11 is the kms-plugin provider whose key-encryption keys are
// AES-256 secret keys inside a PKCS#11 token: a network HSM, a TPM 2.0
// through tpm2-pkcs11, or SoftHSM for development and CI. The keys are
// generated on the token as sensitive and non-extractable, and never leave
// it: every seal and open is a C_Encrypt or C_Decrypt call.
//
// The provider needs cgo and the module's shared library at run time, so
// it is built only with the pkcs11 build tag (make build-pkcs11); without
// the tag this package holds only its configuration and key_id rules.
//
// # Keys and versions
//
// Version N of key label K is the token object of class CKO_SECRET_KEY,
// type CKK_AES, with CKA_LABEL "K-vN" and CKA_ID the 8-byte big-endian N.
// The highest version that may still decrypt is the current one; a
// retired version has CKA_DECRYPT set to false, so the token itself
// refuses it. kmsctl pkcs11 rotate generates version N+1 on the token;
// every plugin picks it up at its next --pkcs11-refresh-interval.
//
// # key_id
//
// "pkcs11:<token label>/<key label>:v<N>:<check>", where check is the
// first 8 bytes, in hex, of the key's encryption of a zero block
// (AES-ECB, computed on the token). It names the token, the key and the
// version, and two different keys never share it: a key deleted and
// generated again under the same label and version has another check.
//
// # Sealing
//
// CKM_AES_GCM with a 128-bit tag. The associated data is the envelope's
// (the kms package's header), length-prefixed, followed by the key_id.
// The ciphertext is 0x01 || IV (12 bytes) || GCM output.
//
// The IV is 96 random bits from the operating system's CSPRNG, chosen
// anew for every seal (NIST SP 800-38D, 8.2.2, RBG-based construction).
// If the token replaces it with an IV of its own (FIPS-mode HSMs generate
// GCM IVs themselves), the IV the token used is the one stored. Random
// IVs never repeat by design, only by a birthday accident: SP 800-38D
// bounds a key to 2^32 seals for the chance of any repeat to stay below
// 2^-32. kube-apiserver asks the plugin to seal once per DEK seed (at
// start and when it rotates its seed), so a key version stays many
// orders of magnitude below that limit; rotate long before it anyway.
// A deterministic counter IV is not used because it would have to be
// kept consistent across restarts and across every plugin sharing the
// token, which a PKCS#11 token cannot guarantee.
package pkcs11
