package main

import (
	"context"
	"errors"
	"flag"
	"slices"
	"testing"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/local"
)

// TestRegistryPKCS11 checks that --provider pkcs11 and its flags exist
// exactly in binaries built with the pkcs11 tag, and that the tagged
// build refuses a half-configured token before touching any module.
func TestRegistryPKCS11(t *testing.T) {
	r := newRegistry(local.NewFactory())
	fs := flag.NewFlagSet("kms-plugin", flag.ContinueOnError)
	r.RegisterFlags(fs)
	has := slices.Contains(r.Names(), "pkcs11")
	if has != pkcs11Built || (fs.Lookup("pkcs11-module") != nil) != pkcs11Built {
		t.Fatalf("providers %v, --pkcs11-module registered %v; want pkcs11 exactly when built with the tag (%v)", r.Names(), fs.Lookup("pkcs11-module") != nil, pkcs11Built)
	}
	_, err := r.New(context.Background(), "pkcs11", providers.Env{})
	if !errors.Is(err, providers.ErrNotConfigured) {
		t.Errorf("--provider pkcs11 without its flags = %v, want ErrNotConfigured", err)
	}
}
