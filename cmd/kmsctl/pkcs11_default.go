//go:build !pkcs11

package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/kms-plugin/kms-plugin/providers/pkcs11"
	"github.com/kms-plugin/kms-plugin/rotation"
)

var errNoPKCS11 = errors.New("this kmsctl was built without PKCS#11 support (it is static, without cgo); use the pkcs11 build: make build-pkcs11, or the kms-plugin image's pkcs11 variant")

func newPKCS11Cmd() *cobra.Command {
	cfg := pkcs11.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "pkcs11",
		Short: "Manage the key in a PKCS#11 token (needs the pkcs11 build of kmsctl)",
		RunE:  func(*cobra.Command, []string) error { return errNoPKCS11 },
	}
	addPKCS11Flags(cmd.PersistentFlags(), &cfg)
	for _, name := range []string{"keys", "rotate", "retire"} {
		cmd.AddCommand(&cobra.Command{Use: name, RunE: func(*cobra.Command, []string) error { return errNoPKCS11 }})
	}
	return cmd
}

func openPKCS11Backend(*cobra.Command, pkcs11.Config) (rotation.Backend, func(), error) {
	return nil, nil, errNoPKCS11
}
