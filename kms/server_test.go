package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/local"
	"github.com/kms-plugin/kms-plugin/providers/local/localtest"
)

// fakeProvider is a provider whose behaviour each test sets.
type fakeProvider struct {
	current func() (providers.Key, error)
	encrypt func(ctx context.Context, key providers.Key, pt, aad []byte) ([]byte, error)
	decrypt func(ctx context.Context, key providers.Key, ct, aad []byte) ([]byte, error)
	check   func(ctx context.Context) error
}

func (f *fakeProvider) Current() (providers.Key, error) { return f.current() }
func (f *fakeProvider) Encrypt(ctx context.Context, k providers.Key, pt, aad []byte) ([]byte, error) {
	return f.encrypt(ctx, k, pt, aad)
}
func (f *fakeProvider) Decrypt(ctx context.Context, k providers.Key, ct, aad []byte) ([]byte, error) {
	return f.decrypt(ctx, k, ct, aad)
}
func (f *fakeProvider) Check(ctx context.Context) error { return f.check(ctx) }
func (f *fakeProvider) Close() error                    { return nil }

func okFake() *fakeProvider {
	return &fakeProvider{
		current: func() (providers.Key, error) { return providers.Key{ID: "fake:v1", Ref: []byte{1}}, nil },
		encrypt: func(_ context.Context, _ providers.Key, pt, _ []byte) ([]byte, error) {
			return append(bytes.Repeat([]byte{0xee}, 16), pt...), nil
		},
		decrypt: func(_ context.Context, _ providers.Key, ct, _ []byte) ([]byte, error) { return ct[16:], nil },
		check:   func(context.Context) error { return nil },
	}
}

// newLocalServer returns a Server over a fresh local keyring.
func newLocalServer(t testing.TB) (*Server, *local.Provider, string) {
	t.Helper()
	p, path := localtest.Open(t, nil)
	return newServer(t, p), p, path
}

func newServer(t testing.TB, p providers.Provider) *Server {
	h := NewHealth(p, time.Hour, time.Second, nil, nil)
	h.ProbeNow(context.Background())
	return NewServer(p, h, slog.New(slog.DiscardHandler), nil)
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: code = %v (%v), want %v", what, got, err, want)
	}
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	s, _, _ := newLocalServer(t)
	ctx := context.Background()
	st, err := s.Status(ctx, &kmsapi.StatusRequest{})
	require.NoError(t, err, "Status()")
	require.Equal(t, "v2", st.Version, "Status().Version")
	require.Equal(t, "ok", st.Healthz, "Status().Healthz")
	require.NotEmpty(t, st.KeyId, "Status().KeyId")
	seed := bytes.Repeat([]byte{0x42}, 32)
	enc, err := s.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "u1"})
	if err != nil {
		t.Fatalf("Encrypt() = %v", err)
	}
	if enc.KeyId != st.KeyId {
		t.Errorf("Encrypt key_id %q != Status key_id %q", enc.KeyId, st.KeyId)
	}
	if len(enc.Ciphertext) == 0 || len(enc.Ciphertext) > maxCiphertextLen || bytes.Contains(enc.Ciphertext, seed) {
		t.Errorf("Encrypt ciphertext of %d bytes contains the seed or breaks the limit", len(enc.Ciphertext))
	}
	for k := range enc.Annotations {
		t.Errorf("unexpected annotation %q", k)
	}
	dec, err := s.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "u2", Annotations: enc.Annotations})
	if err != nil || !bytes.Equal(dec.Plaintext, seed) {
		t.Fatalf("Decrypt(Encrypt(seed)) = %x, %v; want the seed", dec.GetPlaintext(), err)
	}
}

func TestBadInputsGetInvalidArgument(t *testing.T) {
	s, _, _ := newLocalServer(t)
	ctx := context.Background()
	enc, err := s.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: bytes.Repeat([]byte{1}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	ct, keyID := enc.Ciphertext, enc.KeyId
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(ct)) }
	cases := []struct {
		name  string
		ct    []byte
		keyID string
		want  codes.Code
	}{
		{"empty ciphertext", nil, keyID, codes.InvalidArgument},
		{"one byte", ct[:1], keyID, codes.InvalidArgument},
		{"truncated header", ct[:3], keyID, codes.InvalidArgument},
		{"truncated tag", ct[:len(ct)-1], keyID, codes.InvalidArgument},
		{"oversized", make([]byte, maxCiphertextLen+1), keyID, codes.InvalidArgument},
		{"unknown format version", mutate(func(b []byte) []byte { b[0] = 9; return b }), keyID, codes.InvalidArgument},
		{"zero ref length", mutate(func(b []byte) []byte { b[1] = 0; return b }), keyID, codes.InvalidArgument},
		{"huge ref length", mutate(func(b []byte) []byte { b[1] = 200; return b }), keyID, codes.InvalidArgument},
		{"flipped body", mutate(func(b []byte) []byte { b[len(b)-5] ^= 1; return b }), keyID, codes.InvalidArgument},
		{"flipped nonce", mutate(func(b []byte) []byte { b[4] ^= 1; return b }), keyID, codes.InvalidArgument},
		{"other key version ref", mutate(func(b []byte) []byte { b[2] = 2; return b }), keyID, codes.InvalidArgument},
		{"empty key_id", ct, "", codes.InvalidArgument},
		{"oversized key_id", ct, strings.Repeat("k", maxKeyIDLen+1), codes.InvalidArgument},
		{"wrong key_id", ct, keyID + "0", codes.InvalidArgument},
		{"key_id of another keyring", ct, "local:0000000000000000:v1", codes.NotFound},
	}
	for _, c := range cases {
		resp, err := s.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: c.ct, KeyId: c.keyID})
		wantCode(t, c.name, err, c.want)
		if resp != nil {
			t.Errorf("%s: Decrypt returned plaintext", c.name)
		}
	}

	for _, n := range []int{0, maxPlaintextLen + 1, 1 << 20} {
		_, err := s.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: make([]byte, n)})
		wantCode(t, fmt.Sprintf("Encrypt(%d-byte plaintext)", n), err, codes.InvalidArgument)
	}
}

func TestEncryptNeverExceedsLimit(t *testing.T) {
	s, _, _ := newLocalServer(t)
	ctx := context.Background()
	// Walk sizes around the limit: every reply is within 1024 bytes, and
	// every refusal is InvalidArgument.
	fits := 0
	for n := maxPlaintextLen - 40; n <= maxPlaintextLen; n++ {
		resp, err := s.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: make([]byte, n)})
		if err != nil {
			wantCode(t, "Encrypt near the limit", err, codes.InvalidArgument)
			continue
		}
		fits++
		if len(resp.Ciphertext) > maxCiphertextLen {
			t.Fatalf("Encrypt(%d bytes) returned %d bytes, over %d", n, len(resp.Ciphertext), maxCiphertextLen)
		}
	}
	if fits == 0 {
		t.Errorf("no plaintext near the limit fit; the limit check is too strict")
	}
}

func TestProviderErrorsMapToCodes(t *testing.T) {
	cases := []struct {
		err  error
		want codes.Code
	}{
		{providers.ErrInvalidCiphertext, codes.InvalidArgument},
		{providers.ErrInvalidArgument, codes.InvalidArgument},
		{providers.ErrKeyNotFound, codes.NotFound},
		{providers.ErrKeyRetired, codes.FailedPrecondition},
		{providers.ErrNotConfigured, codes.FailedPrecondition},
		{providers.ErrPermissionDenied, codes.PermissionDenied},
		{providers.ErrUnavailable, codes.Unavailable},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{errors.New("something odd"), codes.Internal},
	}
	for _, c := range cases {
		f := okFake()
		wrapped := errors.Join(errors.New("decrypt with key v1"), c.err)
		f.decrypt = func(context.Context, providers.Key, []byte, []byte) ([]byte, error) { return nil, wrapped }
		f.encrypt = func(context.Context, providers.Key, []byte, []byte) ([]byte, error) { return nil, wrapped }
		s := newServer(t, f)
		_, err := s.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: []byte("x")})
		wantCode(t, "Encrypt with "+c.err.Error(), err, c.want)
		ct := append([]byte{envelopeV1, 1, 1}, make([]byte, 16)...)
		_, err = s.Decrypt(context.Background(), &kmsapi.DecryptRequest{Ciphertext: ct, KeyId: "fake:v1"})
		wantCode(t, "Decrypt with "+c.err.Error(), err, c.want)
	}
}

func TestStatus(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name     string
		check    error
		wantCode codes.Code
		healthz  string
	}{
		{"healthy", nil, codes.OK, "ok"},
		{"transient trouble", providers.ErrUnavailable, codes.OK, "unhealthy: backend unavailable"},
		{"access revoked", providers.ErrPermissionDenied, codes.PermissionDenied, ""},
		{"key deleted", providers.ErrKeyNotFound, codes.NotFound, ""},
		{"key disabled", providers.ErrKeyRetired, codes.FailedPrecondition, ""},
	}
	for _, c := range cases {
		f := okFake()
		calls := 0
		f.check = func(context.Context) error { calls++; return c.check }
		s := newServer(t, f)
		for range 5 {
			resp, err := s.Status(ctx, &kmsapi.StatusRequest{})
			wantCode(t, c.name, err, c.wantCode)
			if err == nil && (resp.Healthz != c.healthz || resp.Version != "v2" || resp.KeyId != "fake:v1") {
				t.Errorf("%s: Status() = %+v, want healthz %q, v2, fake:v1", c.name, resp, c.healthz)
			}
		}
		if calls != 1 {
			t.Errorf("%s: 5 Status calls made %d backend checks, want 1 (the probe's)", c.name, calls)
		}
	}
}

func TestStatusRejectsBadProviderKey(t *testing.T) {
	for name, key := range map[string]providers.Key{
		"empty id":  {ID: "", Ref: []byte{1}},
		"long id":   {ID: strings.Repeat("x", 1025), Ref: []byte{1}},
		"empty ref": {ID: "k", Ref: nil},
	} {
		f := okFake()
		f.current = func() (providers.Key, error) { return key, nil }
		s := newServer(t, f)
		_, err := s.Status(context.Background(), &kmsapi.StatusRequest{})
		wantCode(t, name, err, codes.Internal)
		_, err = s.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: []byte("x")})
		wantCode(t, name, err, codes.Internal)
	}
}

func TestRotationKeepsOldCiphertexts(t *testing.T) {
	s, p, _ := newLocalServer(t)
	ctx := context.Background()
	old, err := s.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("old seed")})
	if err != nil {
		t.Fatal(err)
	}
	k, err := p.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := s.Status(ctx, &kmsapi.StatusRequest{})
	if st.KeyId != k.ID || st.KeyId == old.KeyId {
		t.Errorf("Status key_id after rotation = %q, want %q", st.KeyId, k.ID)
	}
	dec, err := s.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: old.Ciphertext, KeyId: old.KeyId})
	if err != nil || string(dec.Plaintext) != "old seed" {
		t.Errorf("Decrypt(old) after rotation = %v, %v", dec, err)
	}
	if err := p.RetireBelow(ctx, 2); err != nil {
		t.Fatal(err)
	}
	_, err = s.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: old.Ciphertext, KeyId: old.KeyId})
	wantCode(t, "Decrypt under a retired key", err, codes.FailedPrecondition)
	if err != nil && !strings.Contains(err.Error(), "version 1") {
		t.Errorf("retired-key error %q does not name the version", err)
	}
}

func TestGoldenVectors(t *testing.T) {
	// Each keyring file and the ciphertexts sealed under it must decrypt
	// forever: golden-keyring.json is keyring format 1 (key_ids without a
	// check value), golden-keyring-format2.json format 2. Regenerate only
	// for a new format, never by editing these files.
	for _, g := range []struct{ keyring, vectors string }{
		{"testdata/golden-keyring.json", "testdata/golden-v1.txt"},
		{"testdata/golden-keyring-format2.json", "testdata/golden-v1-format2.txt"},
	} {
		t.Run(filepath.Base(g.keyring), func(t *testing.T) {
			path, p := openGoldenKeyring(t, g.keyring)
			s := newServer(t, p)
			vectors := readGolden(t, g.vectors)
			if len(vectors) < 3 {
				t.Fatalf("only %d golden vectors", len(vectors))
			}
			decryptAll := func(when string) {
				t.Helper()
				for _, v := range vectors {
					dec, err := s.Decrypt(context.Background(), &kmsapi.DecryptRequest{Ciphertext: v.ciphertext, KeyId: v.keyID})
					if err != nil || !bytes.Equal(dec.GetPlaintext(), v.plaintext) {
						t.Errorf("golden %s %s: Decrypt = %x, %v; want %x", v.keyID, when, dec.GetPlaintext(), err, v.plaintext)
					}
				}
			}
			decryptAll("as committed")

			// kmsctl's next change writes the current format. The
			// versions keep their key_ids, and the new one names its key.
			before, err := p.Keys(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Rotate(context.Background()); err != nil {
				t.Fatalf("Rotate() on the golden keyring = %v", err)
			}
			after, err := p.Keys(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for i, k := range before {
				if after[i].KeyID != k.KeyID {
					t.Errorf("version %d changed key_id from %s to %s on upgrade", k.Version, k.KeyID, after[i].KeyID)
				}
			}
			if n := after[len(after)-1]; !strings.HasSuffix(n.KeyID, ":"+n.Check) || n.Check == "" {
				t.Errorf("new version's key_id %s does not carry its check value %q", n.KeyID, n.Check)
			}
			decryptAll("after the upgrade")
			if _, err := local.Load(path); err != nil {
				t.Errorf("the upgraded file does not load: %v", err)
			}
		})
	}
}

// openGoldenKeyring copies a committed keyring to a private file and opens
// it.
func openGoldenKeyring(t *testing.T, name string) (string, *local.Provider) {
	t.Helper()
	src, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keyring.json")
	if err := os.WriteFile(path, src, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := local.Open(path, 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return path, p
}
