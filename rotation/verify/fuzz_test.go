package verify

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
)

// fuzzKMSv2Value is what kube-apiserver stores for a KMS v2 object.
func fuzzKMSv2Value(t testing.TB, provider, keyID string, data []byte) []byte {
	b, err := proto.Marshal(&kmstypes.EncryptedObject{EncryptedData: data, KeyID: keyID, EncryptedDEKSource: []byte("edek"), EncryptedDEKSourceType: kmstypes.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED})
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte("k8s:enc:kms:v2:"+provider+":"), b...)
}

// maxProblem bounds what Classify may say about a value: kmsctl verify
// prints it for every damaged object, and a value read from etcd may be
// anything (a plaintext Secret among them), so Problem quotes at most a
// short head of it.
const maxProblem = 256

// FuzzClassify feeds Classify any etcd value: it never panics, returns a
// known type, calls encrypted only what carries the "k8s:enc:" prefix and
// identity only what does not, and keeps Problem short.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{
		"k8s\x00\n\x0cv1\x12\x06Secret",
		`{"kind":"Secret","apiVersion":"v1","data":{"password":"aHVudGVyMg=="}}`,
		"  \n{}",
		"\xd9\xd9\xf7\xa1",
		"k8s:enc:aescbc:v1:key1:\x00\x01",
		"k8s:enc:aesgcm:v1:key1:",
		"k8s:enc:secretbox:v1:k:",
		"k8s:enc:kms:v1:old:ciphertext",
		"k8s:enc:kms:v2:kms-plugin:\x0a\x03abc\x12\x05local",
		"k8s:enc:kms:v2:kms-plugin:\xff\xff",
		"k8s:enc:kms:v2:",
		"k8s:enc:unknown:v9:x:",
		"k8s:enc:" + strings.Repeat("a", 300) + ":v1:k:",
		"",
		"\x00",
	} {
		f.Add([]byte(s))
	}
	f.Add(fuzzKMSv2Value(f, "kms-plugin", "local:0123456789abcdef:v1", []byte("sealed")))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c := Classify(raw)
		switch c.Type {
		case Identity, AESCBC, AESGCM, Secretbox, KMSv1, KMSv2, Unknown:
		default:
			t.Fatalf("Classify(%q) = type %q, not a known type", raw, c.Type)
		}
		encrypted := c.Type != Identity && c.Type != Unknown
		if encrypted && !bytes.HasPrefix(raw, []byte("k8s:enc:")) {
			t.Fatalf("Classify(%q) = %s without the k8s:enc: prefix", raw, c.Type)
		}
		if c.Type == Identity && bytes.HasPrefix(raw, []byte("k8s:enc:")) {
			t.Fatalf("Classify(%q) called an encrypted value identity", raw)
		}
		if n := len(c.Problem); n > maxProblem {
			t.Fatalf("Classify: Problem is %d bytes, want at most %d: %.80q...", n, maxProblem, c.Problem)
		}
		if c.Type == KMSv2 && c.KeyID == "" && c.Problem == "" {
			t.Fatalf("Classify(%q) = KMS v2 with no key_id and no problem", raw)
		}
		_ = c.Label()
	})
}

// FuzzClassifyKMSv2 builds the values kube-apiserver writes and checks that
// Classify reads back their provider and key_id exactly.
func FuzzClassifyKMSv2(f *testing.F) {
	f.Add("kms-plugin", "local:0123456789abcdef:v1", []byte("sealed"))
	f.Add("vault", "vault:transit/kms:v3:1700000000", []byte{})
	f.Add("p", "", []byte("x"))
	f.Fuzz(func(t *testing.T, provider, keyID string, data []byte) {
		if strings.ContainsRune(provider, ':') || !utf8.ValidString(keyID) {
			return // the apiserver refuses such provider names; proto strings are UTF-8
		}
		c := Classify(fuzzKMSv2Value(t, provider, keyID, data))
		if c.Type != KMSv2 || c.Provider != provider {
			t.Fatalf("Classify(kms v2 value of %q) = %+v", provider, c)
		}
		if keyID != "" && (c.KeyID != keyID || c.Problem != "") {
			t.Fatalf("Classify(kms v2 value with key_id %q) = %+v", keyID, c)
		}
		if keyID == "" && c.Problem == "" {
			t.Fatalf("Classify(kms v2 value without key_id) = %+v, want a problem", c)
		}
	})
}
