package kms

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/providers/local"
)

// FuzzDecrypt feeds arbitrary ciphertexts and key_ids to a server over the
// golden keyring. It must never panic, and it may only accept an input that
// is exactly a golden vector, returning that vector's plaintext.
func FuzzDecrypt(f *testing.F) {
	vectors := readGolden(f, "testdata/golden-v1.txt")
	for _, v := range vectors {
		f.Add(v.ciphertext, v.keyID)
		f.Add(v.ciphertext[:len(v.ciphertext)/2], v.keyID)
	}
	f.Add([]byte{}, "")
	f.Add([]byte{1, 64}, "local:0000000000000000:v1")

	src, err := os.ReadFile("testdata/golden-keyring.json")
	if err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(f.TempDir(), "keyring.json")
	if err := os.WriteFile(path, src, 0o600); err != nil {
		f.Fatal(err)
	}
	p, err := local.Open(path, 0, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	defer p.Close()
	s := newServer(f, p)

	f.Fuzz(func(t *testing.T, ct []byte, keyID string) {
		resp, err := s.Decrypt(context.Background(), &kmsapi.DecryptRequest{Ciphertext: ct, KeyId: keyID})
		if err != nil {
			if resp != nil {
				t.Fatalf("Decrypt returned plaintext with error %v", err)
			}
			return
		}
		for _, v := range vectors {
			if v.keyID == keyID && bytes.Equal(v.ciphertext, ct) && bytes.Equal(v.plaintext, resp.Plaintext) {
				return
			}
		}
		t.Fatalf("Decrypt accepted a ciphertext that Encrypt never produced (key_id %q, %x)", keyID, ct)
	})
}

// FuzzParseEnvelope checks that the parser never panics and that what it
// accepts re-frames to the same bytes.
func FuzzParseEnvelope(f *testing.F) {
	f.Add([]byte{1, 1, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Add([]byte{})
	f.Add([]byte{2})
	f.Add([]byte{1, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := parseEnvelope(b)
		if err != nil {
			return
		}
		again := append(envelopeHeader(env.keyRef), env.sealed...)
		if !bytes.Equal(again, b) {
			t.Fatalf("parse/frame round trip changed %x into %x", b, again)
		}
		if len(env.sealed) < minSealedLen {
			t.Fatalf("accepted %d sealed bytes, below the minimum", len(env.sealed))
		}
	})
}
