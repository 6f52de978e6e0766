package vault

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/providers"
)

// testAPIBackend is the real backend for the Vault (or stand-in) at addr,
// using token.
func testAPIBackend(t testing.TB, addr, token string) *apiBackend {
	t.Helper()
	be, err := newAPIBackend(Config{Addr: addr, Mount: "transit", Key: "kms", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	be.SetToken(token)
	return be
}

// fakeBackend is a backend whose every call is a function field; nil
// fields fall back to the in-memory transit below.
type fakeBackend struct {
	encrypt   func(ctx context.Context, version int64, plaintext, ad []byte) (string, error)
	decrypt   func(ctx context.Context, ciphertext string, ad []byte) ([]byte, error)
	readKey   func(ctx context.Context) (keyMetadata, error)
	rotate    func(ctx context.Context) error
	setMinDec func(ctx context.Context, version int64) error
	login     func(ctx context.Context, mount string, body map[string]any) (tokenInfo, error)
	lookup    func(ctx context.Context) (tokenInfo, error)
	renew     func(ctx context.Context) (tokenInfo, error)

	mem *memTransit

	mu     sync.Mutex
	token  string
	counts map[string]int
}

func (f *fakeBackend) count(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.counts == nil {
		f.counts = map[string]int{}
	}
	f.counts[name]++
}

func (f *fakeBackend) calls(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[name]
}

func (f *fakeBackend) currentToken() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.token
}

func (f *fakeBackend) FollowLeader(context.Context) (bool, error) { return true, nil }

func (f *fakeBackend) NodeMoved() <-chan struct{} { return nil }

func (f *fakeBackend) CapabilitiesSelf(context.Context, string) ([]string, error) {
	return []string{"update", "read"}, nil
}

func (f *fakeBackend) Encrypt(ctx context.Context, version int64, plaintext, ad []byte) (string, error) {
	f.count("encrypt")
	if f.encrypt != nil {
		return f.encrypt(ctx, version, plaintext, ad)
	}
	return f.mem.encrypt(version, plaintext, ad)
}

func (f *fakeBackend) Decrypt(ctx context.Context, ciphertext string, ad []byte) ([]byte, error) {
	f.count("decrypt")
	if f.decrypt != nil {
		return f.decrypt(ctx, ciphertext, ad)
	}
	return f.mem.decrypt(ciphertext, ad)
}

func (f *fakeBackend) ReadKey(ctx context.Context) (keyMetadata, error) {
	f.count("read")
	if f.readKey != nil {
		return f.readKey(ctx)
	}
	return f.mem.metadata()
}

func (f *fakeBackend) Rotate(ctx context.Context) error {
	f.count("rotate")
	if f.rotate != nil {
		return f.rotate(ctx)
	}
	f.mem.rotateKey()
	return nil
}

func (f *fakeBackend) SetMinDecryptionVersion(ctx context.Context, version int64) error {
	f.count("config")
	if f.setMinDec != nil {
		return f.setMinDec(ctx, version)
	}
	f.mem.mu.Lock()
	f.mem.minDec = version
	f.mem.mu.Unlock()
	return nil
}

func (f *fakeBackend) Login(ctx context.Context, mount string, body map[string]any) (tokenInfo, error) {
	f.count("login")
	if f.login != nil {
		return f.login(ctx, mount, body)
	}
	return tokenInfo{Token: "t-" + strconv.Itoa(f.calls("login")), TTL: time.Hour, Renewable: true}, nil
}

func (f *fakeBackend) LookupSelf(ctx context.Context) (tokenInfo, error) {
	f.count("lookup")
	if f.lookup != nil {
		return f.lookup(ctx)
	}
	return tokenInfo{}, nil
}

func (f *fakeBackend) RenewSelf(ctx context.Context) (tokenInfo, error) {
	f.count("renew")
	if f.renew != nil {
		return f.renew(ctx)
	}
	return tokenInfo{TTL: time.Hour, Renewable: true}, nil
}

func (f *fakeBackend) SetToken(token string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.token = token
}

// memTransit is a small in-memory stand-in for a transit aes256-gcm96 key:
// enough for provider logic tests. Real transit is covered by the
// integration tests.
type memTransit struct {
	mu      sync.Mutex
	keys    map[int64][]byte
	created map[int64]time.Time
	latest  int64
	minDec  int64
	deleted bool
	clock   time.Time
}

func newMemTransit() *memTransit {
	m := &memTransit{keys: map[int64][]byte{}, created: map[int64]time.Time{}, clock: time.Unix(1700000000, 0), minDec: 1}
	m.rotateKey()
	return m
}

func (m *memTransit) rotateKey() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.latest++
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	m.keys[m.latest] = k
	m.clock = m.clock.Add(time.Minute)
	m.created[m.latest] = m.clock
}

func (m *memTransit) metadata() (keyMetadata, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.deleted {
		return keyMetadata{}, errKeyMissing
	}
	md := keyMetadata{Type: "aes256-gcm96", SupportsEncryption: true, Latest: m.latest, MinDecryptionVersion: m.minDec, Created: map[int64]time.Time{}}
	for v, c := range m.created {
		if v >= m.minDec { // like transit: archived versions are not listed
			md.Created[v] = c
		}
	}
	return md, nil
}

func (m *memTransit) aead(v int64) (cipher.AEAD, error) {
	k, ok := m.keys[v]
	if !ok {
		return nil, &api.ResponseError{StatusCode: 400, Errors: []string{"invalid ciphertext: version is too new"}}
	}
	b, _ := aes.NewCipher(k)
	return cipher.NewGCM(b)
}

func (m *memTransit) encrypt(v int64, pt, ad []byte) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.deleted {
		return "", &api.ResponseError{StatusCode: 400, Errors: []string{"encryption key not found"}}
	}
	a, err := m.aead(v)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, a.NonceSize())
	_, _ = rand.Read(nonce)
	return transitPrefix(v) + base64.StdEncoding.EncodeToString(a.Seal(nonce, nonce, pt, ad)), nil
}

func (m *memTransit) decrypt(s string, ad []byte) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.deleted {
		return nil, &api.ResponseError{StatusCode: 400, Errors: []string{"encryption key not found"}}
	}
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 || parts[0] != "vault" {
		return nil, &api.ResponseError{StatusCode: 400, Errors: []string{"invalid ciphertext: no prefix"}}
	}
	v, err := strconv.ParseInt(strings.TrimPrefix(parts[1], "v"), 10, 64)
	if err != nil {
		return nil, &api.ResponseError{StatusCode: 400, Errors: []string{"invalid ciphertext: version number could not be decoded"}}
	}
	if v < m.minDec {
		return nil, &api.ResponseError{StatusCode: 400, Errors: []string{"ciphertext or signature version is disallowed by policy (too old)"}}
	}
	a, err := m.aead(v)
	if err != nil {
		return nil, err
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) < a.NonceSize() {
		return nil, &api.ResponseError{StatusCode: 400, Errors: []string{"invalid ciphertext: could not decode base64"}}
	}
	pt, err := a.Open(nil, raw[:a.NonceSize()], raw[a.NonceSize():], ad)
	if err != nil {
		return nil, &api.ResponseError{StatusCode: 400, Errors: []string{"cipher: message authentication failed"}}
	}
	return pt, nil
}

// testConfig is a valid AppRole config for fakes, with a role_id file.
func testConfig(t *testing.T) Config {
	t.Helper()
	roleID := filepath.Join(t.TempDir(), "role-id")
	if err := os.WriteFile(roleID, []byte("role\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.Addr = "http://127.0.0.1:1"
	c.Key = "kms"
	c.Auth = AuthAppRole
	c.RoleIDFile = roleID
	c.Timeout = time.Second
	c.RefreshInterval = time.Hour
	c.DecryptCacheSize = 0
	return c
}

// newTestProvider builds a provider over fb (with an in-memory transit if
// fb.mem is nil) and closes it at the end of the test.
func newTestProvider(t *testing.T, cfg Config, fb *fakeBackend) *Provider {
	t.Helper()
	if fb.mem == nil {
		fb.mem = newMemTransit()
	}
	p, err := newProvider(context.Background(), cfg, fb, providers.Env{}, time.Now)
	if err != nil {
		t.Fatalf("newProvider: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
