// Package providers defines what a key-encryption-key backend must do for
// kms-plugin: the Provider interface, the optional capabilities that some
// backends add (rotation, listing, retiring), the sentinel errors that the
// KMS service maps to gRPC codes, and a registry that cmd/ builds as a value.
//
// A provider never sees the KMS v2 wire format. The kms package frames every
// ciphertext in its own versioned envelope and hands the provider the
// associated data to bind; the provider picks the key, seals, and opens.
package providers

import (
	"context"
	"time"
)

// Key names one version of a key-encryption key.
type Key struct {
	// ID is the public key_id that kube-apiserver stores next to every
	// object: stable for the life of the key version, never reused by a
	// different key, and free of key material.
	ID string
	// Ref is the provider's compact reference to the version (for example
	// its version number). It travels inside the ciphertext envelope so
	// that Decrypt can find the version without trusting the caller.
	Ref []byte
	// Created is when the version was made; zero when the backend does
	// not say. Only Current fills it: it is what the key-age metric and
	// the rotation-policy alert read.
	Created time.Time
}

// Provider seals and opens data-encryption keys under a key-encryption key
// that never leaves the backend.
//
// Implementations must be safe for concurrent use.
type Provider interface {
	// Current returns the key that Encrypt uses now. It must be cheap and
	// must not call a remote backend: Status calls it on every poll.
	Current() (Key, error)
	// Encrypt seals plaintext under key, which Current returned, binding
	// aad and key.ID as associated data.
	Encrypt(ctx context.Context, key Key, plaintext, aad []byte) ([]byte, error)
	// Decrypt opens ciphertext sealed by Encrypt under key with the same
	// aad. It fails with ErrInvalidCiphertext when key.ID does not name the
	// version in key.Ref, or when authentication fails, and never returns
	// wrong plaintext.
	Decrypt(ctx context.Context, key Key, ciphertext, aad []byte) ([]byte, error)
	// Check probes the backend's health. The kms package calls it from a
	// background loop, never per request.
	Check(ctx context.Context) error
	// Close releases the provider's resources.
	Close() error
}

// KeyState is the lifecycle state of one key version.
type KeyState string

// Key states. Exactly one version is primary; primary and active versions
// decrypt; retired versions are refused; a pruned version's key is gone for
// good, and only its number and check value are kept, so that neither is
// ever used again.
const (
	StatePrimary KeyState = "primary"
	StateActive  KeyState = "active"
	StateRetired KeyState = "retired"
	StatePruned  KeyState = "pruned"
)

// KeyInfo describes one key version for operators. It never holds key bytes.
type KeyInfo struct {
	Version int64     `json:"version"`
	KeyID   string    `json:"key_id"`
	State   KeyState  `json:"state"`
	Created time.Time `json:"created"`
	// Check is a key check value: a short public fingerprint of the key
	// bytes, equal on two nodes only if they hold the same key. Empty when
	// the backend keeps the key out of reach (Vault).
	Check string `json:"check,omitempty"`
}

// Rotator is implemented by providers that can create a new primary key
// version in place.
type Rotator interface {
	Rotate(ctx context.Context) (Key, error)
}

// KeyLister is implemented by providers that can list their key versions.
type KeyLister interface {
	Keys(ctx context.Context) ([]KeyInfo, error)
}

// Retirer is implemented by providers that can stop decrypting old versions.
type Retirer interface {
	// RetireBelow retires every version lower than version. It refuses to
	// retire the primary version.
	RetireBelow(ctx context.Context, version int64) error
}

// Warner is implemented by providers that keep serving while something
// needs an operator's attention, such as a keyring file that failed to
// reload while the last good keyring stays in use. Warning returns nil when
// all is well.
type Warner interface {
	Warning() error
}

// Loader is implemented by providers that load their keys from somewhere
// (a file) and reload them while serving. It reports what the admin API
// shows and what kmsctl rotate checks before it promotes a new key.
type Loader interface {
	LoadState() LoadState
}

// LoadState is how a Loader's loading went.
type LoadState struct {
	// LoadedAt is when the keys in memory were last loaded successfully.
	LoadedAt time.Time
	// LastAttempt is when a reload was last tried; zero if never.
	LastAttempt time.Time
	// LastError is why the last reload was refused; nil if it succeeded.
	LastError error
	// ReloadInterval is how often reloads are tried; zero: never.
	ReloadInterval time.Duration
}
