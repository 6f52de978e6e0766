package rotation

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/local"
)

// KeyVersion names one key version and the key_id plugins report for it.
type KeyVersion struct {
	Version int64  `json:"version"`
	KeyID   string `json:"key_id"`
}

// Backend is where the key-encryption key lives. Every method is
// idempotent, so that a rotation interrupted anywhere can run it again.
type Backend interface {
	// Describe says what the backend is, for the plan and the state.
	Describe() string
	// Current returns the version that encrypts now.
	Current(ctx context.Context) (KeyVersion, error)
	// Add makes a version newer than after able to decrypt everywhere
	// without encrypting yet (phase 1), and returns it. If such a version
	// already exists (an earlier, interrupted run added it), Add adopts it
	// instead of adding another.
	Add(ctx context.Context, after int64) (KeyVersion, error)
	// Promote makes v the version that encrypts, everywhere (phase 2).
	Promote(ctx context.Context, v KeyVersion) error
	// Retire makes every version other than keep stop decrypting and
	// returns the key_ids it retired.
	Retire(ctx context.Context, keep KeyVersion) ([]string, error)
	// SinglePhase reports whether Add already makes the new version
	// encrypt (Vault), so that promote has no reload to wait for.
	SinglePhase() bool
}

// LocalBackend is a set of copies of one local keyring, one per
// control-plane node, as paths this process can write (local disks, or
// the nodes' files mounted here).
type LocalBackend struct {
	Paths []string
	Now   func() time.Time
}

// SinglePhase implements Backend: a new keyring version decrypts first and
// encrypts only once promoted, after every plugin loaded it.
func (b *LocalBackend) SinglePhase() bool { return false }

// Describe implements Backend.
func (b *LocalBackend) Describe() string {
	return fmt.Sprintf("local keyring %v", b.Paths)
}

// Current returns the primary version, after checking that every copy
// holds the same keyring, with the same primary, and the same key under
// every version number that two copies share (by check value). A copy
// that differs is named: promoting on top of diverged copies would leave
// each node unable to read what the others write.
func (b *LocalBackend) Current(context.Context) (KeyVersion, error) {
	var cur KeyVersion
	var first *local.Keyring
	for i, p := range b.Paths {
		k, err := local.LoadAsOperator(p)
		if err != nil {
			return KeyVersion{}, err
		}
		prim := k.Primary()
		v := KeyVersion{Version: prim.Version, KeyID: k.KeyID(prim.Version)}
		if i == 0 {
			cur, first = v, k
			continue
		}
		if k.ID != first.ID {
			return KeyVersion{}, fmt.Errorf("keyring %s has id %s, but %s has %s: every node must hold the same keyring", p, k.ID, b.Paths[0], first.ID)
		}
		if err := SameKeys(b.Paths[0], first.Infos(), p, k.Infos()); err != nil {
			return KeyVersion{}, err
		}
		if v != cur {
			return KeyVersion{}, fmt.Errorf("keyring %s has primary %s, but %s has %s: finish or undo the earlier rotation first", p, v.KeyID, b.Paths[0], cur.KeyID)
		}
	}
	return cur, nil
}

// Keys lists the versions with their check values, after checking (as
// Current does) that every copy agrees.
func (b *LocalBackend) Keys(ctx context.Context) ([]providers.KeyInfo, error) {
	if _, err := b.Current(ctx); err != nil {
		return nil, err
	}
	k, err := local.LoadAsOperator(b.Paths[0])
	if err != nil {
		return nil, err
	}
	return k.Infos(), nil
}

// SameKeys checks that two nodes' views of one keyring (a file, or what a
// plugin reports it has loaded) hold the same key under every version
// number they share, by check value, and names the one that differs.
func SameKeys(refName string, ref []providers.KeyInfo, name string, got []providers.KeyInfo) error {
	checks := make(map[int64]string, len(ref))
	for _, v := range ref {
		checks[v.Version] = v.Check
	}
	for _, v := range got {
		want, ok := checks[v.Version]
		if ok && want != "" && v.Check != "" && want != v.Check {
			return fmt.Errorf("%s holds another key than %s under version %d (check %s, %s has %s): the keyrings have diverged; copy one file to every node (docs/keyring.md) before rotating", name, refName, v.Version, v.Check, refName, want)
		}
	}
	return nil
}

// Add adds a version to the first keyring (or adopts the newest usable
// version above after), then copies it, as an active version, to every
// other keyring that lacks it.
func (b *LocalBackend) Add(_ context.Context, after int64) (KeyVersion, error) {
	now := time.Now
	if b.Now != nil {
		now = b.Now
	}
	var added local.Version
	var keyID string
	_, err := local.Update(b.Paths[0], func(k *local.Keyring) error {
		var newest *local.Version
		for i := range k.Versions {
			v := &k.Versions[i]
			if v.Version > after && usable(v.State) && (newest == nil || v.Version > newest.Version) {
				newest = v
			}
		}
		if newest == nil {
			var err error
			if newest, err = k.Add(now()); err != nil {
				return err
			}
		}
		added = *newest
		added.Key = slices.Clone(newest.Key)
		keyID = k.KeyID(added.Version)
		return nil
	})
	if err != nil {
		return KeyVersion{}, fmt.Errorf("add key version to %s: %w", b.Paths[0], err)
	}
	ring, err := local.Load(b.Paths[0])
	if err != nil {
		return KeyVersion{}, err
	}
	for _, p := range b.Paths[1:] {
		_, err := local.Update(p, func(k *local.Keyring) error {
			if k.ID != ring.ID {
				return fmt.Errorf("keyring id %s differs from %s's %s", k.ID, b.Paths[0], ring.ID)
			}
			if err := k.Import(added); err != nil {
				return fmt.Errorf("%w; copy %s over it", err, b.Paths[0])
			}
			return nil
		})
		if err != nil {
			return KeyVersion{}, fmt.Errorf("copy version %d to %s: %w", added.Version, p, err)
		}
	}
	return KeyVersion{Version: added.Version, KeyID: keyID}, nil
}

// Promote makes v primary in every keyring.
func (b *LocalBackend) Promote(_ context.Context, v KeyVersion) error {
	for _, p := range b.Paths {
		if _, err := local.Update(p, func(k *local.Keyring) error { return k.Promote(v.Version) }); err != nil {
			return fmt.Errorf("promote version %d in %s: %w", v.Version, p, err)
		}
	}
	return nil
}

// Retire retires every version but keep in every keyring. It refuses if
// keep is not the primary anywhere: the version that encrypts is the only
// one that may remain.
func (b *LocalBackend) Retire(_ context.Context, keep KeyVersion) ([]string, error) {
	retired := map[string]bool{}
	for _, p := range b.Paths {
		_, err := local.Update(p, func(k *local.Keyring) error {
			if prim := k.Primary(); prim.Version != keep.Version {
				return fmt.Errorf("primary is version %d, not %d", prim.Version, keep.Version)
			}
			for _, v := range k.Versions {
				if v.Version != keep.Version && usable(v.State) {
					if err := k.Retire(v.Version); err != nil {
						return err
					}
					retired[k.KeyID(v.Version)] = true
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("retire old versions in %s: %w", p, err)
		}
	}
	var ids []string
	for id := range retired {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// usable reports whether a version in state s can still decrypt.
func usable(s providers.KeyState) bool {
	return s == providers.StatePrimary || s == providers.StateActive
}
