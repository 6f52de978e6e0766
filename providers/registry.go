package providers

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Env is what a factory gets from the process that builds the provider.
type Env struct {
	Logger  *slog.Logger
	Metrics prometheus.Registerer
}

// Factory builds one kind of provider from its own command-line flags.
type Factory interface {
	// Name is the value of --provider that selects this factory.
	Name() string
	// RegisterFlags adds the provider's flags to fs. Every factory's flags
	// are registered, so names must be prefixed (--vault-addr, --keyring).
	RegisterFlags(fs *flag.FlagSet)
	// New validates the parsed flags and builds the provider.
	New(ctx context.Context, env Env) (Provider, error)
}

// Registry maps provider names to factories. It is a value built in cmd/,
// never a package global, so tests build exactly the registry they need.
type Registry struct {
	factories map[string]Factory
}

// NewRegistry returns a registry holding the given factories.
func NewRegistry(factories ...Factory) *Registry {
	r := &Registry{factories: make(map[string]Factory, len(factories))}
	for _, f := range factories {
		r.factories[f.Name()] = f
	}
	return r
}

// Names lists the registered provider names in order.
func (r *Registry) Names() []string {
	names := make([]string, 0, len(r.factories))
	for n := range r.factories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// RegisterFlags registers every factory's flags on fs.
func (r *Registry) RegisterFlags(fs *flag.FlagSet) {
	for _, n := range r.Names() {
		r.factories[n].RegisterFlags(fs)
	}
}

// New builds the provider called name.
func (r *Registry) New(ctx context.Context, name string, env Env) (Provider, error) {
	f, ok := r.factories[name]
	if !ok {
		return nil, fmt.Errorf("unknown provider %q (known: %s): %w", name, strings.Join(r.Names(), ", "), ErrNotConfigured)
	}
	return f.New(ctx, env)
}
