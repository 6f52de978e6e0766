package main

import (
	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/local"
	"github.com/kms-plugin/kms-plugin/providers/vault"
)

// newRegistry lists the backends this binary ships: local and vault
// always, and those that need cgo (pkcs11) when built with their tag.
func newRegistry(lf *local.Factory) *providers.Registry {
	return providers.NewRegistry(append([]providers.Factory{lf, vault.NewFactory()}, cgoFactories()...)...)
}
