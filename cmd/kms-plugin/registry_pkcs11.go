//go:build pkcs11

package main

import (
	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/pkcs11"
)

// cgoFactories: this binary was built with -tags pkcs11 (make build-pkcs11).
func cgoFactories() []providers.Factory { return []providers.Factory{pkcs11.NewFactory()} }
