package local

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
)

// Config selects a keyring file.
type Config struct {
	// Keyring is the keyring file's path.
	Keyring string
	// ReloadInterval is how often the file is checked for changes; 0
	// disables hot reload.
	ReloadInterval time.Duration
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Keyring == "" {
		return fmt.Errorf("--keyring is required for the local provider: %w", providers.ErrNotConfigured)
	}
	if c.ReloadInterval < 0 {
		return errors.New("--keyring-reload-interval must not be negative")
	}
	return nil
}

// Factory builds the local provider from its flags.
type Factory struct {
	Config Config
}

// NewFactory returns the local provider's factory with default settings.
func NewFactory() *Factory {
	return &Factory{Config: Config{ReloadInterval: time.Second}}
}

// Name implements providers.Factory.
func (f *Factory) Name() string { return "local" }

// RegisterFlags implements providers.Factory.
func (f *Factory) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&f.Config.Keyring, "keyring", f.Config.Keyring, "local provider: path of the keyring file (mode 0600, owned by the plugin's user)")
	fs.DurationVar(&f.Config.ReloadInterval, "keyring-reload-interval", f.Config.ReloadInterval, "local provider: how often to check the keyring file for changes (0 disables hot reload)")
}

// New implements providers.Factory.
func (f *Factory) New(_ context.Context, env providers.Env) (providers.Provider, error) {
	if err := f.Config.Validate(); err != nil {
		return nil, err
	}
	return Open(f.Config.Keyring, f.Config.ReloadInterval, env.Logger, env.Metrics)
}
