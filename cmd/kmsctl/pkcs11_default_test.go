//go:build !pkcs11

package main

import (
	"errors"
	"testing"
)

// The static kmsctl knows the pkcs11 commands and flags, and says that it
// cannot run them instead of "unknown command".
func TestPKCS11NeedsItsBuild(t *testing.T) {
	pin := writePIN(t, "1234")
	for _, args := range [][]string{
		{"pkcs11", "keys", "--pkcs11-module", "/m.so", "--pkcs11-token-label", "t", "--pkcs11-pin-file", pin},
		{"rotate", "--backend", "pkcs11", "--pkcs11-module", "/m.so", "--pkcs11-token-label", "t", "--pkcs11-pin-file", pin},
	} {
		if _, err := kmsctl(args...); !errors.Is(err, errNoPKCS11) {
			t.Errorf("kmsctl %v = %v, want %v", args, err, errNoPKCS11)
		}
	}
}
