//go:build pkcs11

package pkcs11

import (
	"fmt"

	p11 "github.com/miekg/pkcs11"
)

type sessionHandle = p11.SessionHandle

// assertKeyObject checks the attributes that keep the key inside the token.
func assertKeyObject(p *Provider, sh p11.SessionHandle, h p11.ObjectHandle) error {
	attrs, err := p.mod.ctx.GetAttributeValue(sh, h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_SENSITIVE, nil), p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
		p11.NewAttribute(p11.CKA_NEVER_EXTRACTABLE, nil), p11.NewAttribute(p11.CKA_TOKEN, nil),
		p11.NewAttribute(p11.CKA_WRAP, nil), p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
	})
	if err != nil {
		return err
	}
	a := attrMap(attrs)
	if !isTrue(a[p11.CKA_SENSITIVE]) || !isFalse(a[p11.CKA_EXTRACTABLE]) || !isTrue(a[p11.CKA_NEVER_EXTRACTABLE]) ||
		!isTrue(a[p11.CKA_TOKEN]) || !isFalse(a[p11.CKA_WRAP]) || ulong(a[p11.CKA_VALUE_LEN]) != 32 {
		return fmt.Errorf("key object attributes = %v; want a sensitive, never extractable AES-256 token key that wraps nothing", a)
	}
	// Its value cannot be read.
	if _, err := p.mod.ctx.GetAttributeValue(sh, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)}); err == nil {
		return fmt.Errorf("CKA_VALUE of the key could be read")
	}
	return nil
}
