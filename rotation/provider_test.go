package rotation

import (
	"context"
	"fmt"
	"testing"

	"github.com/kms-plugin/kms-plugin/providers"
)

// fakeKey is a shared key as ProviderBackend sees it.
type fakeKey struct {
	latest, retiredBelow int64
	rotations, retires   int
}

func (f *fakeKey) Keys(context.Context) ([]providers.KeyInfo, error) {
	var out []providers.KeyInfo
	for v := int64(1); v <= f.latest; v++ {
		state := providers.StateActive
		switch {
		case v == f.latest:
			state = providers.StatePrimary
		case v < f.retiredBelow:
			state = providers.StateRetired
		}
		out = append(out, providers.KeyInfo{Version: v, KeyID: fmt.Sprintf("pkcs11:t/k:v%d:00", v), State: state})
	}
	return out, nil
}

func (f *fakeKey) Rotate(context.Context) (providers.Key, error) {
	f.latest++
	f.rotations++
	return providers.Key{}, nil
}

func (f *fakeKey) RetireBelow(_ context.Context, v int64) error {
	f.retiredBelow = v
	f.retires++
	return nil
}

func TestProviderBackend(t *testing.T) {
	ctx := context.Background()
	f := &fakeKey{latest: 3, retiredBelow: 2}
	b := &ProviderBackend{Key: f, Name: "pkcs11 key k"}
	if !b.SinglePhase() {
		t.Error("SinglePhase() = false; a shared token's new version encrypts at once")
	}
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
	if err != nil || f.retiredBelow != 4 || len(ids) != 2 {
		t.Fatalf("Retire() = %v, %v retiring below %d; want versions 2 and 3 retired", ids, err, f.retiredBelow)
	}
	if ids, err := b.Retire(ctx, v); err != nil || len(ids) != 0 || f.retires != 1 {
		t.Errorf("Retire() again = %v, %v after %d retires; want nothing left to retire", ids, err, f.retires)
	}
	f.latest = 5 // someone rotated again meanwhile
	if _, err := b.Retire(ctx, v); err == nil {
		t.Error("Retire() keeping a version that is no longer current succeeded")
	}
	if err := b.Promote(ctx, v); err == nil {
		t.Error("Promote() of a version that is no longer current succeeded")
	}
}
