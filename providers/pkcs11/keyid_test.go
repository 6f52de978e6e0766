package pkcs11

import (
	"bytes"
	"errors"
	"testing"

	"github.com/kms-plugin/kms-plugin/providers"
)

func TestObjectLabelAndID(t *testing.T) {
	for _, v := range []int64{1, 9, 10, 12345, maxVersion} {
		if got, ok := parseObjectLabel("kek", objectLabel("kek", v)); !ok || got != v {
			t.Errorf("parseObjectLabel(objectLabel(%d)) = %d, %v", v, got, ok)
		}
		if got, ok := parseObjectID(objectID(v)); !ok || got != v {
			t.Errorf("parseObjectID(objectID(%d)) = %d, %v", v, got, ok)
		}
		if got, err := parseRef(encodeRef(v)); err != nil || got != v {
			t.Errorf("parseRef(encodeRef(%d)) = %d, %v", v, got, err)
		}
	}
	for _, s := range []string{"kek-v0", "kek-v01", "kek-v-1", "kek-v+1", "kek-v", "kek-v1x", "kek-x-v1", "kekx-v1", "kek-v99999999999999", "other-v1"} {
		if v, ok := parseObjectLabel("kek", s); ok {
			t.Errorf("parseObjectLabel(%q) = %d, want refused", s, v)
		}
	}
	for _, b := range [][]byte{nil, {1}, make([]byte, 8), bytes.Repeat([]byte{0xff}, 8), make([]byte, 9)} {
		if v, ok := parseObjectID(b); ok {
			t.Errorf("parseObjectID(%x) = %d, want refused", b, v)
		}
	}
	for _, r := range []string{"", "0", "01", "-1", "1 ", "x", "99999999999999"} {
		if _, err := parseRef([]byte(r)); !errors.Is(err, providers.ErrInvalidCiphertext) {
			t.Errorf("parseRef(%q) = %v, want ErrInvalidCiphertext", r, err)
		}
	}
}

func TestKeyIDNamesTokenKeyVersionAndCheck(t *testing.T) {
	got := keyID(tokenName("my token:1/x     "), "kek", 3, "0123456789abcdef")
	if want := "pkcs11:my_token_1_x/kek:v3:0123456789abcdef"; got != want {
		t.Errorf("keyID = %q, want %q", got, want)
	}
	if a, b := keyID("t", "k", 1, "0000000000000001"), keyID("t", "k", 1, "0000000000000002"); a == b {
		t.Error("two check values give the same key_id")
	}
	if tokenName("") != "_" {
		t.Errorf("tokenName(\"\") = %q", tokenName(""))
	}
}

func TestSplitCiphertext(t *testing.T) {
	good := append([]byte{formatGCM}, make([]byte, ivSize+1+tagSize)...)
	if _, _, err := splitCiphertext(good); err != nil {
		t.Errorf("splitCiphertext(minimal) = %v", err)
	}
	bad := [][]byte{nil, {formatGCM}, good[:len(good)-1], append([]byte{0x02}, good[1:]...), append([]byte{formatGCM}, make([]byte, ivSize+maxPlaintext+tagSize+1)...)}
	for _, b := range bad {
		if _, _, err := splitCiphertext(b); !errors.Is(err, providers.ErrInvalidCiphertext) {
			t.Errorf("splitCiphertext(%d bytes) = %v, want ErrInvalidCiphertext", len(b), err)
		}
	}
}

func TestAssociatedDataIsUnambiguous(t *testing.T) {
	if bytes.Equal(associatedData([]byte("ab"), "c"), associatedData([]byte("a"), "bc")) {
		t.Error("(ab, c) and (a, bc) bind the same bytes")
	}
}
