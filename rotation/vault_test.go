package rotation

import (
	"context"
	"fmt"
	"testing"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/vault"
)

// fakeTransit is a transit key as VaultBackend sees it.
type fakeTransit struct {
	latest, minDecrypt int64
	rotations          int
}

func (f *fakeTransit) Status(context.Context) (vault.KeyStatus, error) {
	st := vault.KeyStatus{LatestVersion: f.latest, MinDecryptionVersion: f.minDecrypt}
	for v := int64(1); v <= f.latest; v++ {
		state := providers.StateActive
		if v < f.minDecrypt {
			state = providers.StateRetired
		}
		st.Versions = append(st.Versions, providers.KeyInfo{Version: v, KeyID: fmt.Sprintf("vault:transit/k:v%d:0", v), State: state})
	}
	return st, nil
}

func (f *fakeTransit) Rotate(context.Context) (providers.Key, error) {
	f.latest++
	f.rotations++
	return providers.Key{}, nil
}

func (f *fakeTransit) RetireBelow(_ context.Context, v int64) error {
	f.minDecrypt = v
	return nil
}

func TestVaultBackend(t *testing.T) {
	ctx := context.Background()
	f := &fakeTransit{latest: 3, minDecrypt: 2}
	b := &VaultBackend{Key: f, Name: "transit/k"}
	old, err := b.Current(ctx)
	if err != nil || old.Version != 3 {
		t.Fatalf("Current() = %+v, %v; want version 3", old, err)
	}
	v, err := b.Add(ctx, old.Version)
	if err != nil || v.Version != 4 || f.rotations != 1 {
		t.Fatalf("Add() = %+v, %v after %d rotations; want version 4 after 1", v, err, f.rotations)
	}
	if again, err := b.Add(ctx, old.Version); err != nil || again != v || f.rotations != 1 {
		t.Fatalf("Add() again = %+v, %v after %d rotations; want %+v adopted, no new rotation", again, err, f.rotations, v)
	}
	if err := b.Promote(ctx, v); err != nil {
		t.Fatalf("Promote() = %v", err)
	}
	ids, err := b.Retire(ctx, v)
	if err != nil || f.minDecrypt != 4 || len(ids) != 2 {
		t.Fatalf("Retire() = %v, %v with min_decryption_version %d; want versions 2 and 3 retired, min 4", ids, err, f.minDecrypt)
	}
	f.latest = 5 // someone rotated again meanwhile
	if _, err := b.Retire(ctx, v); err == nil {
		t.Error("Retire() keeping a version that is no longer the latest succeeded")
	}
	if err := b.Promote(ctx, v); err == nil {
		t.Error("Promote() of a version that is no longer the latest succeeded")
	}
}
