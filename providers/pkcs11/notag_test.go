//go:build !pkcs11

package pkcs11

import "testing"

// The provider needs cgo and a PKCS#11 module; its tests run with the
// pkcs11 tag (make test-pkcs11), against SoftHSM.
func TestProviderNeedsPKCS11Tag(t *testing.T) {
	t.Skip("the PKCS#11 provider is built only with -tags pkcs11; run make test-pkcs11 (needs softhsm2)")
}
