package rotation

import (
	"context"
	"fmt"

	"github.com/kms-plugin/kms-plugin/providers"
)

// RotatingKey is a provider whose key lives in a backend that every plugin
// shares and reads again on its own (a PKCS#11 token): it can add a
// version that becomes current at once, list its versions and retire old
// ones. *pkcs11.Provider implements it.
type RotatingKey interface {
	providers.Rotator
	providers.KeyLister
	providers.Retirer
}

// ProviderBackend rotates a RotatingKey. As with Vault, a new version
// encrypts at once, which is safe because every plugin decrypts it as
// soon as it exists (a plugin that meets a version newer than it knows
// reads the backend again). So Add does both phases and Promote has
// nothing left to do.
type ProviderBackend struct {
	Key  RotatingKey
	Name string // what the key is, for messages
}

var _ Backend = (*ProviderBackend)(nil)

// SinglePhase implements Backend.
func (b *ProviderBackend) SinglePhase() bool { return true }

// Describe implements Backend.
func (b *ProviderBackend) Describe() string { return b.Name }

func (b *ProviderBackend) versions(ctx context.Context) (KeyVersion, []providers.KeyInfo, error) {
	infos, err := b.Key.Keys(ctx)
	if err != nil {
		return KeyVersion{}, nil, err
	}
	for _, i := range infos {
		if i.State == providers.StatePrimary {
			return KeyVersion{Version: i.Version, KeyID: i.KeyID}, infos, nil
		}
	}
	return KeyVersion{}, infos, fmt.Errorf("%s has no current version", b.Name)
}

// Current implements Backend.
func (b *ProviderBackend) Current(ctx context.Context) (KeyVersion, error) {
	v, _, err := b.versions(ctx)
	return v, err
}

// Add adds a version, unless one newer than after is current already.
func (b *ProviderBackend) Add(ctx context.Context, after int64) (KeyVersion, error) {
	v, _, err := b.versions(ctx)
	if err != nil {
		return KeyVersion{}, err
	}
	if v.Version > after {
		return v, nil
	}
	if _, err := b.Key.Rotate(ctx); err != nil {
		return KeyVersion{}, err
	}
	return b.Current(ctx)
}

// Promote implements Backend: the newest version already encrypts.
func (b *ProviderBackend) Promote(ctx context.Context, v KeyVersion) error {
	cur, err := b.Current(ctx)
	if err != nil {
		return err
	}
	if cur.Version != v.Version || cur.KeyID != v.KeyID {
		return fmt.Errorf("%s: current version is %s, not %s; another rotation happened meanwhile", b.Name, cur.KeyID, v.KeyID)
	}
	return nil
}

// Retire retires every version below keep, which must be current.
func (b *ProviderBackend) Retire(ctx context.Context, keep KeyVersion) ([]string, error) {
	cur, infos, err := b.versions(ctx)
	if err != nil {
		return nil, err
	}
	if cur != keep {
		return nil, fmt.Errorf("%s: current version is %s, not %s; refusing to retire", b.Name, cur.KeyID, keep.KeyID)
	}
	var ids []string
	for _, i := range infos {
		if i.Version < keep.Version && i.State != providers.StateRetired {
			ids = append(ids, i.KeyID)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	if err := b.Key.RetireBelow(ctx, keep.Version); err != nil {
		return nil, err
	}
	return ids, nil
}
