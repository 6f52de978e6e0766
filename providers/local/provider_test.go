package local

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/providertest"
)

// newKeyringFile creates a fresh keyring file in a temporary directory.
func newKeyringFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyring.json")
	k, err := NewKeyring(time.Now())
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	if err := Create(path, k); err != nil {
		t.Fatalf("Create() = %v", err)
	}
	return path
}

// openProvider opens the keyring at path without hot reload; the test
// closes it.
func openProvider(t *testing.T, path string) *Provider {
	t.Helper()
	p, err := Open(path, 0, nil, nil)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func TestConformance(t *testing.T) {
	providertest.Run(t, func(t *testing.T) providers.Provider {
		p, err := Open(newKeyringFile(t), 0, nil, nil)
		if err != nil {
			t.Fatalf("Open() = %v", err)
		}
		return p
	})
}
