package main

import (
	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/local"
)

// newRegistry lists the backends this binary ships.
func newRegistry(lf *local.Factory) *providers.Registry {
	return providers.NewRegistry(lf)
}
