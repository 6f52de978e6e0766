package providers

import "errors"

// Sentinel errors. Providers wrap them ("decrypt with key version 3: %w") and
// the kms package maps each to one gRPC code, in one place.
var (
	// ErrInvalidCiphertext: the ciphertext is malformed, truncated,
	// tampered with, or was not produced under the key_id given.
	ErrInvalidCiphertext = errors.New("invalid ciphertext")
	// ErrInvalidArgument: the request itself is unusable (for example an
	// oversized plaintext).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrKeyNotFound: the key version named does not exist in the backend.
	ErrKeyNotFound = errors.New("key not found")
	// ErrKeyRetired: the key version exists but is retired or disabled and
	// may no longer decrypt.
	ErrKeyRetired = errors.New("key retired")
	// ErrPermissionDenied: the backend refused the plugin's credentials.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnavailable: the backend is unreachable, sealed, throttled or
	// failing; the call may succeed later.
	ErrUnavailable = errors.New("backend unavailable")
	// ErrNotConfigured: the provider's configuration is invalid.
	ErrNotConfigured = errors.New("provider not configured")
)

// IsRevocation reports whether err means the key-encryption key can no
// longer be used at all (access revoked, key deleted or disabled), as
// opposed to transient trouble. The KMS service fails Status closed on
// revocation instead of reporting an unhealthy plugin; see docs/security.md.
func IsRevocation(err error) bool {
	return errors.Is(err, ErrPermissionDenied) || errors.Is(err, ErrKeyNotFound) || errors.Is(err, ErrKeyRetired)
}
