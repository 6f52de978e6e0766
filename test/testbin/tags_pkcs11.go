//go:build pkcs11

package testbin

func init() { buildTags = append(buildTags, "pkcs11") }
