package pkcs11

import "testing"

// FuzzParse feeds the parsers of what comes from outside (the envelope's
// key reference, the ciphertext, token object labels and IDs): they must
// refuse or accept, never panic, and accept only what round-trips.
func FuzzParse(f *testing.F) {
	f.Add([]byte("1"), "kek-v1")
	f.Add([]byte{formatGCM, 0, 1}, "kek-v0")
	f.Fuzz(func(t *testing.T, b []byte, s string) {
		if v, err := parseRef(b); err == nil && string(encodeRef(v)) != string(b) {
			t.Errorf("parseRef(%q) = %d, which encodes as %q", b, v, encodeRef(v))
		}
		if v, ok := parseObjectLabel("kek", s); ok && objectLabel("kek", v) != s {
			t.Errorf("parseObjectLabel(%q) = %d, which labels as %q", s, v, objectLabel("kek", v))
		}
		if v, ok := parseObjectID(b); ok && string(objectID(v)) != string(b) {
			t.Errorf("parseObjectID(%x) = %d", b, v)
		}
		if iv, body, err := splitCiphertext(b); err == nil && (len(iv) != ivSize || len(body) < 1+tagSize) {
			t.Errorf("splitCiphertext(%x) = %x, %x", b, iv, body)
		}
		_ = tokenName(s)
	})
}
