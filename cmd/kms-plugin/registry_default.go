//go:build !pkcs11

package main

import "github.com/kms-plugin/kms-plugin/providers"

// cgoFactories: the default build is static (CGO_ENABLED=0) and ships no
// cgo backend; make build-pkcs11 adds --provider pkcs11.
func cgoFactories() []providers.Factory { return nil }
