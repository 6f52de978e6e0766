package main

import (
	"flag"

	"github.com/spf13/pflag"

	"github.com/kms-plugin/kms-plugin/providers/pkcs11"
)

// addPKCS11Flags registers the plugin's --pkcs11-* flags, minus those that
// only matter to a running plugin. They exist in every kmsctl, so that a
// build without PKCS#11 support can say so instead of "unknown flag".
func addPKCS11Flags(fs *pflag.FlagSet, cfg *pkcs11.Config) {
	gofs := flag.NewFlagSet("pkcs11", flag.ContinueOnError)
	cfg.RegisterFlags(gofs)
	fs.AddGoFlagSet(gofs)
	for _, name := range []string{"pkcs11-refresh-interval", "pkcs11-sessions"} {
		_ = fs.MarkHidden(name)
	}
}
