package local

import (
	"bytes"
	"os"
	"testing"
	"time"
)

// FuzzParse feeds arbitrary bytes to the keyring parser: it must never
// panic, and whatever it accepts must be a valid keyring that marshals back
// to something that parses to the same keyring.
func FuzzParse(f *testing.F) {
	k, err := NewKeyring(time.Unix(1700000000, 0))
	if err != nil {
		f.Fatal(err)
	}
	good, err := k.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte("{}"))
	f.Add([]byte(`{"kind":"kms-plugin-keyring","format":1}`))
	if golden, err := os.ReadFile("../../kms/testdata/golden-keyring.json"); err == nil {
		f.Add(golden)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := Parse(b)
		if err != nil {
			return
		}
		if err := k.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid keyring: %v", err)
		}
		again, err := k.Marshal()
		if err != nil {
			t.Fatalf("Marshal(parsed) = %v", err)
		}
		k2, err := Parse(again)
		if err != nil {
			t.Fatalf("Parse(Marshal(parsed)) = %v", err)
		}
		if k2.ID != k.ID || len(k2.Versions) != len(k.Versions) || !bytes.Equal(k2.Versions[0].Key, k.Versions[0].Key) {
			t.Fatalf("round trip changed the keyring")
		}
	})
}
