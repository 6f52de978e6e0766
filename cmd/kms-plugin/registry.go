package main

import (
	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/local"
	"github.com/kms-plugin/kms-plugin/providers/vault"
)

// newRegistry lists the backends this binary ships.
func newRegistry(lf *local.Factory) *providers.Registry {
	return providers.NewRegistry(lf, vault.NewFactory())
}
