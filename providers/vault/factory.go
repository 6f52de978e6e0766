package vault

import (
	"context"
	"flag"

	"github.com/kms-plugin/kms-plugin/providers"
)

// Name is the value of --provider that selects Vault.
const Name = "vault"

type factory struct {
	cfg Config
}

// NewFactory returns the factory that builds the Vault transit provider
// from the --vault-* flags, with VAULT_* environment variables as defaults.
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
