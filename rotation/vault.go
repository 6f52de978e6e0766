package rotation

import (
	"context"
	"fmt"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/vault"
)

// VaultKey is the part of the Vault provider a rotation uses;
// *vault.Provider implements it.
type VaultKey interface {
	Status(ctx context.Context) (vault.KeyStatus, error)
	Rotate(ctx context.Context) (providers.Key, error)
	RetireBelow(ctx context.Context, version int64) error
}

// VaultBackend is a Vault transit key shared by every plugin. Transit has
// no "decrypt-only" version: a new version encrypts at once, which is safe
// because Vault decrypts every version for every plugin as soon as it
// exists. So Add does both phases and Promote has nothing left to do.
type VaultBackend struct {
	Key  VaultKey
	Name string // mount/key, for messages
}

var _ Backend = (*VaultBackend)(nil)

// SinglePhase implements Backend: Add already made the new version
// encrypt, so promote has no reload to wait for.
func (b *VaultBackend) SinglePhase() bool { return true }

// Describe implements Backend.
func (b *VaultBackend) Describe() string { return "vault transit key " + b.Name }

func (b *VaultBackend) latest(ctx context.Context) (KeyVersion, vault.KeyStatus, error) {
	st, err := b.Key.Status(ctx)
	if err != nil {
		return KeyVersion{}, st, err
	}
	for _, v := range st.Versions {
		if v.Version == st.LatestVersion {
			return KeyVersion{Version: v.Version, KeyID: v.KeyID}, st, nil
		}
	}
	return KeyVersion{}, st, fmt.Errorf("vault key %s: latest version %d not listed", b.Name, st.LatestVersion)
}

// Current implements Backend.
func (b *VaultBackend) Current(ctx context.Context) (KeyVersion, error) {
	v, _, err := b.latest(ctx)
	return v, err
}

// Add rotates the transit key, unless a version newer than after exists.
func (b *VaultBackend) Add(ctx context.Context, after int64) (KeyVersion, error) {
	v, _, err := b.latest(ctx)
	if err != nil {
		return KeyVersion{}, err
	}
	if v.Version > after {
		return v, nil
	}
	if _, err := b.Key.Rotate(ctx); err != nil {
		return KeyVersion{}, err
	}
	v, _, err = b.latest(ctx)
	return v, err
}

// Promote implements Backend: transit's latest version already encrypts.
func (b *VaultBackend) Promote(ctx context.Context, v KeyVersion) error {
	cur, err := b.Current(ctx)
	if err != nil {
		return err
	}
	if cur.Version != v.Version {
		return fmt.Errorf("vault key %s: latest version is %d, not %d; another rotation happened meanwhile", b.Name, cur.Version, v.Version)
	}
	return nil
}

// Retire sets min_decryption_version to keep's version.
func (b *VaultBackend) Retire(ctx context.Context, keep KeyVersion) ([]string, error) {
	cur, st, err := b.latest(ctx)
	if err != nil {
		return nil, err
	}
	if cur.Version != keep.Version {
		return nil, fmt.Errorf("vault key %s: latest version is %d, not %d; refusing to retire", b.Name, cur.Version, keep.Version)
	}
	var ids []string
	for _, v := range st.Versions {
		if v.Version < keep.Version && v.State != providers.StateRetired {
			ids = append(ids, v.KeyID)
		}
	}
	if st.MinDecryptionVersion >= keep.Version {
		return ids, nil
	}
	if err := b.Key.RetireBelow(ctx, keep.Version); err != nil {
		return nil, err
	}
	return ids, nil
}
