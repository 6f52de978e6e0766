//go:build pkcs11

package pkcs11

import (
	"context"
	"flag"

	"github.com/kms-plugin/kms-plugin/providers"
)

type factory struct {
	cfg Config
}

// NewFactory returns the factory that builds the PKCS#11 provider from the
// --pkcs11-* flags.
func NewFactory() providers.Factory {
	return &factory{cfg: DefaultConfig()}
}

func (f *factory) Name() string { return Name }

func (f *factory) RegisterFlags(fs *flag.FlagSet) { f.cfg.RegisterFlags(fs) }

func (f *factory) New(ctx context.Context, env providers.Env) (providers.Provider, error) {
	p, err := New(ctx, f.cfg, env)
	if err != nil {
		return nil, err
	}
	return p, nil
}
