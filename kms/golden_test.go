package kms

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/providers/local"
	"github.com/kms-plugin/kms-plugin/providers/local/localtest"
)

type goldenVector struct {
	keyID                 string
	plaintext, ciphertext []byte
}

// readGolden reads "key_id plaintext-hex ciphertext-hex" lines.
func readGolden(t testing.TB, path string) []goldenVector {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []goldenVector
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 3 {
			t.Fatalf("bad golden line %q", line)
		}
		pt, err1 := hex.DecodeString(fields[1])
		ct, err2 := hex.DecodeString(fields[2])
		if err1 != nil || err2 != nil {
			t.Fatalf("bad hex in golden line %q", line)
		}
		out = append(out, goldenVector{fields[0], pt, ct})
	}
	return out
}

// TestWriteGolden writes the golden files of the current keyring format
// when KMS_PLUGIN_WRITE_GOLDEN is set. It exists for new formats; files
// already committed must never change.
func TestWriteGolden(t *testing.T) {
	if os.Getenv("KMS_PLUGIN_WRITE_GOLDEN") == "" {
		t.Skip("set KMS_PLUGIN_WRITE_GOLDEN=1 to regenerate testdata (new formats only)")
	}
	k, err := local.NewKeyring(time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Rotate(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	p, path := localtest.Open(t, k)
	s := newServer(t, p)
	var b strings.Builder
	b.WriteString("# key_id plaintext ciphertext (hex), envelope format v1, keyring format 2\n")
	seal := func(pt []byte) {
		resp, err := s.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: pt})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %x %x\n", resp.KeyId, pt, resp.Ciphertext)
	}
	seal([]byte("0123456789abcdef0123456789abcdef"))
	seal([]byte{0})
	if err := p.RetireBelow(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	// Seal one vector under version 1 too, by promoting it back in a copy.
	if _, err := local.Update(path, func(k *local.Keyring) error { return k.Promote(1) }); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	seal([]byte("sealed under version 1 of the golden keyring"))
	// A pruned tombstone (version 3) pins that part of the format too.
	if _, err := local.Update(path, func(k *local.Keyring) error {
		if err := k.Promote(2); err != nil {
			return err
		}
		v, err := k.Add(time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC))
		if err != nil {
			return err
		}
		if err := k.Retire(v.Version); err != nil {
			return err
		}
		return k.Prune(v.Version)
	}); err != nil {
		t.Fatal(err)
	}
	ring, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("testdata/golden-keyring-format2.json", ring, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("testdata/golden-v1-format2.txt", []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
