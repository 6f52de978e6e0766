package providers

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
)

// Sentinel errors. Providers wrap them ("decrypt with key version 3: %w");
// the table below (Classify) gives each its gRPC code, its metrics label and
// whether it is a revocation, for every package.
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

// Class is what one sentinel means to the rest of the plugin.
type Class struct {
	// Sentinel is the error a provider wraps; nil for success.
	Sentinel error
	// Code is the gRPC code kube-apiserver sees.
	Code codes.Code
	// Outcome is the metrics label, the same in every series that has an
	// outcome.
	Outcome string
	// Revocation: the key-encryption key can no longer be used at all
	// (access revoked, key deleted or disabled), as opposed to transient
	// trouble. The KMS service fails Status closed on revocation instead
	// of reporting an unhealthy plugin; see docs/security.md.
	Revocation bool
}

// classes is the one table from sentinel to code, label and revocation.
// An error that wraps two sentinels takes the first one listed.
var classes = []Class{
	{ErrInvalidCiphertext, codes.InvalidArgument, "invalid_ciphertext", false},
	{ErrInvalidArgument, codes.InvalidArgument, "invalid_argument", false},
	{ErrKeyNotFound, codes.NotFound, "key_not_found", true},
	{ErrKeyRetired, codes.FailedPrecondition, "key_retired", true},
	{ErrNotConfigured, codes.FailedPrecondition, "not_configured", false},
	{ErrPermissionDenied, codes.PermissionDenied, "permission_denied", true},
	{ErrUnavailable, codes.Unavailable, "unavailable", false},
}

// Outcomes of errors that are no sentinel's.
var (
	classOK               = Class{Code: codes.OK, Outcome: "ok"}
	classDeadlineExceeded = Class{Code: codes.DeadlineExceeded, Outcome: "deadline_exceeded"}
	classCanceled         = Class{Code: codes.Canceled, Outcome: "canceled"}
	classOther            = Class{Code: codes.Internal, Outcome: "error"}
)

// Classify returns err's class: success for nil; the caller's deadline or
// cancellation when err says so (before any sentinel: the caller gave up,
// whatever the backend was doing); else the first sentinel err wraps; else
// an internal error.
func Classify(err error) Class {
	switch {
	case err == nil:
		return classOK
	case errors.Is(err, context.DeadlineExceeded):
		return classDeadlineExceeded
	case errors.Is(err, context.Canceled):
		return classCanceled
	}
	for _, c := range classes {
		if errors.Is(err, c.Sentinel) {
			return c
		}
	}
	return classOther
}

// Outcome is err's metrics label: "ok", or its class's.
func Outcome(err error) string { return Classify(err).Outcome }

// IsRevocation reports whether err wraps any revocation-class sentinel.
func IsRevocation(err error) bool {
	for _, c := range classes {
		if c.Revocation && errors.Is(err, c.Sentinel) {
			return true
		}
	}
	return false
}
