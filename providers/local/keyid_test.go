package local

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
)

// TestKeyIDNamesTheKey makes every operator mistake that used to put two
// different keys under one key_id, and checks that the key_ids differ.
func TestKeyIDNamesTheKey(t *testing.T) {
	now := time.Now()
	base, err := NewKeyring(now)
	if err != nil {
		t.Fatal(err)
	}
	clone := func(k *Keyring) *Keyring {
		b, err := k.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		c, err := Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	add := func(k *Keyring) string {
		v, err := k.Add(now)
		if err != nil {
			t.Fatal(err)
		}
		return k.KeyID(v.Version)
	}

	// An independent "add" on two nodes' copies.
	nodeA, nodeB := clone(base), clone(base)
	if a, b := add(nodeA), add(nodeB); a == b {
		t.Errorf("independent adds on two copies share key_id %s", a)
	}

	// Prune, then rotate: the new key gets a new number and key_id.
	k := clone(base)
	old := add(k)
	if err := k.Retire(2); err != nil {
		t.Fatal(err)
	}
	if err := k.Prune(2); err != nil {
		t.Fatal(err)
	}
	if fresh := add(k); fresh == old || k.Find(3) == nil {
		t.Errorf("after prune, the next key reused %s (versions %+v)", old, k.Infos())
	}

	// Restore a backup taken before a rotation, then rotate again.
	backup := clone(base)
	live := clone(base)
	lost := add(live)
	if again := add(backup); again == lost {
		t.Errorf("rotating a restored backup reused the key_id %s of a key made after the backup", lost)
	}

	// Re-init: a new keyring.
	other, err := NewKeyring(now)
	if err != nil {
		t.Fatal(err)
	}
	if other.KeyID(1) == base.KeyID(1) {
		t.Errorf("two keyrings from init share key_id %s", base.KeyID(1))
	}
}

// TestRetireThenPruneInOneReload: a running plugin sees a version go from
// active to pruned between two reloads (kmsctl retire, then prune). It
// accepts the file, and the pruned version reads as key not found.
func TestRetireThenPruneInOneReload(t *testing.T) {
	ctx := context.Background()
	path := newKeyringFile(t)
	p, err := Open(path, 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	k1, _ := p.Current()
	ct, err := p.Encrypt(ctx, k1, []byte("old"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Update(path, func(k *Keyring) error { _, err := k.Rotate(time.Now()); return err }); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	for _, change := range []func(*Keyring) error{
		func(k *Keyring) error { return k.Retire(1) },
		func(k *Keyring) error { return k.Prune(1) },
	} {
		if _, err := Update(path, change); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Reload(); err != nil {
		t.Fatalf("Reload() after retire and prune in one interval = %v, want it accepted", err)
	}
	if p.Warning() != nil {
		t.Errorf("Warning() = %v after an accepted reload", p.Warning())
	}
	if _, err := p.Decrypt(ctx, k1, ct, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("Decrypt() under the pruned version = %v, want %v", err, providers.ErrKeyNotFound)
	}
}

// TestDivergedCopyIsKeyNotFound: a ciphertext made on a node whose copy
// holds another key under the same version fails as "key not found",
// naming the divergence, instead of as an authentication failure.
func TestDivergedCopyIsKeyNotFound(t *testing.T) {
	ctx := context.Background()
	pathA := newKeyringFile(t)
	b, err := os.ReadFile(pathA)
	if err != nil {
		t.Fatal(err)
	}
	pathB := newKeyringFile(t)
	if err := os.WriteFile(pathB, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{pathA, pathB} {
		if _, err := Update(path, func(k *Keyring) error { _, err := k.Rotate(time.Now()); return err }); err != nil {
			t.Fatal(err)
		}
	}
	a, b2 := openProvider(t, pathA), openProvider(t, pathB)
	ka, _ := a.Current()
	kb, _ := b2.Current()
	if ka.ID == kb.ID {
		t.Fatalf("diverged copies report one key_id %s", ka.ID)
	}
	ct, err := a.Encrypt(ctx, ka, []byte("written on node A"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Decrypt(ctx, ka, ct, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("Decrypt() on node B of node A's ciphertext = %v, want %v naming the divergence", err, providers.ErrKeyNotFound)
	}
}
