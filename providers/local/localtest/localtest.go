// Package localtest gives tests a local-keyring provider in one call: a
// keyring file in a temporary directory and the provider that serves it,
// closed when the test ends.
package localtest

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/providers/local"
)

// Open writes k (a fresh keyring when nil) to keyring.json in a new
// temporary directory and opens a provider on it with hot reload off. It
// returns the provider and the file's path.
func Open(t testing.TB, k *local.Keyring) (*local.Provider, string) {
	t.Helper()
	if k == nil {
		var err error
		if k, err = local.NewKeyring(time.Now()); err != nil {
			t.Fatalf("new keyring: %v", err)
		}
	}
	path := filepath.Join(t.TempDir(), "keyring.json")
	if err := local.Create(path, k); err != nil {
		t.Fatalf("create keyring: %v", err)
	}
	p, err := local.Open(path, 0, nil, nil)
	if err != nil {
		t.Fatalf("open keyring: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p, path
}
