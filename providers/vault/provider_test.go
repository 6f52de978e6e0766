package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/providertest"
)

func TestRoundTripBindsAADAndKeyID(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	key, err := p.Current()
	if err != nil {
		t.Fatalf("Current() = %v", err)
	}
	if want := "vault:transit/kms:v1:" + fmt.Sprint(fb.mem.created[1].Unix()); key.ID != want {
		t.Errorf("Current().ID = %q, want %q", key.ID, want)
	}
	if string(key.Ref) != "1" {
		t.Errorf("Current().Ref = %q, want %q", key.Ref, "1")
	}
	pt := []byte("0123456789abcdef0123456789abcdef")
	aad := []byte("envelope header")
	ct, err := p.Encrypt(context.Background(), key, pt, aad)
	if err != nil {
		t.Fatalf("Encrypt() = %v", err)
	}
	if bytes.HasPrefix(ct, []byte("vault:")) {
		t.Errorf("Encrypt() kept transit's text prefix: %q", ct)
	}
	got, err := p.Decrypt(context.Background(), key, ct, aad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Decrypt() = %q, %v; want %q", got, err, pt)
	}

	// The transit ciphertext is bound to aad and key_id: any change fails.
	tests := []struct {
		name string
		key  providers.Key
		ct   []byte
		aad  []byte
	}{
		{"other aad", key, ct, []byte("other header")},
		{"aad moved into key_id", providers.Key{ID: key.ID, Ref: key.Ref}, ct, append(bytes.Clone(aad), 'x')},
		{"flipped byte", key, flip(ct, len(ct)-1), aad},
		{"truncated", key, ct[:5], aad},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := p.Decrypt(context.Background(), tc.key, tc.ct, tc.aad); !errors.Is(err, providers.ErrInvalidCiphertext) {
				t.Errorf("Decrypt() = %v, want %v", err, providers.ErrInvalidCiphertext)
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

func TestEncryptUsesExactVersionAndChecksPrefix(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	old, _ := p.Current()
	if _, err := p.Rotate(context.Background()); err != nil {
		t.Fatalf("Rotate() = %v", err)
	}
	var gotVersion int64
	fb.encrypt = func(ctx context.Context, v int64, pt, ad []byte) (string, error) {
		gotVersion = v
		return fb.mem.encrypt(v, pt, ad)
	}
	if _, err := p.Encrypt(context.Background(), old, []byte("x"), nil); err != nil {
		t.Fatalf("Encrypt(old key) = %v", err)
	}
	if gotVersion != 1 {
		t.Errorf("Encrypt(old key) sent key_version %d, want 1", gotVersion)
	}

	// Transit answering with another version than asked is an error.
	fb.encrypt = func(ctx context.Context, v int64, pt, ad []byte) (string, error) {
		return fb.mem.encrypt(2, pt, ad)
	}
	if ct, err := p.Encrypt(context.Background(), old, []byte("x"), nil); err == nil {
		t.Errorf("Encrypt() with mismatched vault:vN: prefix = %x, nil; want error", ct)
	}
}

func TestEncryptRefusesForeignKey(t *testing.T) {
	p := newTestProvider(t, testConfig(t), &fakeBackend{})
	key, _ := p.Current()
	tests := []struct {
		name string
		key  providers.Key
	}{
		{"wrong id", providers.Key{ID: key.ID + "0", Ref: key.Ref}},
		{"unknown version", providers.Key{ID: key.ID, Ref: []byte("7")}},
		{"bad ref", providers.Key{ID: key.ID, Ref: []byte("01")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := p.Encrypt(context.Background(), tc.key, []byte("x"), nil); !errors.Is(err, providers.ErrInvalidArgument) {
				t.Errorf("Encrypt(%+v) = %v, want %v", tc.key, err, providers.ErrInvalidArgument)
			}
		})
	}
}

func TestDecryptChecksKeyIDBeforeCallingVault(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	key, _ := p.Current()
	ct, err := p.Encrypt(context.Background(), key, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		key  providers.Key
		want error
	}{
		{"id of a recreated key", providers.Key{ID: "vault:transit/kms:v1:1", Ref: key.Ref}, providers.ErrInvalidCiphertext},
		{"id of another key", providers.Key{ID: strings.Replace(key.ID, "/kms:", "/other:", 1), Ref: key.Ref}, providers.ErrInvalidCiphertext},
		{"version that does not exist", providers.Key{ID: key.ID, Ref: []byte("9")}, providers.ErrInvalidCiphertext},
		{"garbage ref", providers.Key{ID: key.ID, Ref: []byte("v1")}, providers.ErrInvalidCiphertext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := fb.calls("decrypt")
			if _, err := p.Decrypt(context.Background(), tc.key, ct, nil); !errors.Is(err, tc.want) {
				t.Errorf("Decrypt(%+v) = %v, want %v", tc.key, err, tc.want)
			}
			if n := fb.calls("decrypt") - before; n != 0 {
				t.Errorf("Decrypt(%+v) made %d Vault decrypt calls, want 0", tc.key, n)
			}
		})
	}
}

func TestRotationElsewhereShowsUpAfterRefresh(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	k1, _ := p.Current()
	ct1, err := p.Encrypt(context.Background(), k1, []byte("one"), nil)
	if err != nil {
		t.Fatal(err)
	}
	fb.mem.rotateKey() // someone ran transit/keys/kms/rotate
	if k, _ := p.Current(); k.ID != k1.ID {
		t.Fatalf("Current() changed before a refresh: %q", k.ID)
	}
	if err := p.Check(context.Background()); err != nil {
		t.Fatalf("Check() = %v", err)
	}
	k2, _ := p.Current()
	if k2.ID == k1.ID || string(k2.Ref) != "2" {
		t.Fatalf("Current() after rotation = %+v, want version 2 with a new id", k2)
	}
	if want := k1.Created.Add(time.Minute); !k2.Created.Equal(want) {
		t.Errorf("Current().Created after rotation = %v, want transit's creation time of version 2, %v", k2.Created, want)
	}
	if got, err := p.Decrypt(context.Background(), k1, ct1, nil); err != nil || string(got) != "one" {
		t.Errorf("Decrypt(old ciphertext) = %q, %v; want %q", got, err, "one")
	}
}

func TestDecryptOfNewerVersionRefreshesMetadata(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	// Another plugin instance rotated and encrypted with version 2.
	fb.mem.rotateKey()
	other := newTestProvider(t, testConfig(t), &fakeBackend{mem: fb.mem})
	k2, _ := other.Current()
	ct, err := other.Encrypt(context.Background(), k2, []byte("two"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := p.Decrypt(context.Background(), k2, ct, nil); err != nil || string(got) != "two" {
		t.Errorf("Decrypt(version 2 unseen) = %q, %v; want %q", got, err, "two")
	}
}

func TestRetireBelow(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	k1, _ := p.Current()
	ct, _ := p.Encrypt(context.Background(), k1, []byte("one"), nil)
	if _, err := p.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.RetireBelow(context.Background(), 3); !errors.Is(err, providers.ErrInvalidArgument) {
		t.Errorf("RetireBelow(3) with latest 2 = %v, want %v", err, providers.ErrInvalidArgument)
	}
	if fb.calls("config") != 0 {
		t.Errorf("RetireBelow(3) reached Vault")
	}
	if err := p.RetireBelow(context.Background(), 2); err != nil {
		t.Fatalf("RetireBelow(2) = %v", err)
	}
	if _, err := p.Decrypt(context.Background(), k1, ct, nil); !errors.Is(err, providers.ErrKeyRetired) {
		t.Errorf("Decrypt(retired version) = %v, want %v", err, providers.ErrKeyRetired)
	}
	keys, err := p.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []providers.KeyState{providers.StateRetired, providers.StatePrimary}
	if len(keys) != len(want) {
		t.Fatalf("Keys() = %+v, want %d versions", keys, len(want))
	}
	for i, k := range keys {
		if k.State != want[i] || k.Version != int64(i+1) {
			t.Errorf("Keys()[%d] = %+v, want version %d %s", i, k, i+1, want[i])
		}
	}
}

func TestCheckTellsRevocationFromTrouble(t *testing.T) {
	tests := []struct {
		name       string
		readErr    error
		revocation bool
		want       error
	}{
		{"key deleted", errKeyMissing, true, providers.ErrKeyNotFound},
		{"access denied", &api.ResponseError{StatusCode: 403, Errors: []string{"permission denied"}}, true, providers.ErrPermissionDenied},
		{"sealed", &api.ResponseError{StatusCode: 503, Errors: []string{"Vault is sealed"}}, false, providers.ErrUnavailable},
		{"throttled", &api.ResponseError{StatusCode: 429, Errors: []string{"rate limited"}}, false, providers.ErrUnavailable},
		{"unreachable", fmt.Errorf("dial tcp 127.0.0.1:1: connect: connection refused"), false, providers.ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fb := &fakeBackend{}
			p := newTestProvider(t, testConfig(t), fb)
			fb.readKey = func(context.Context) (keyMetadata, error) { return keyMetadata{}, tc.readErr }
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err := p.Check(ctx)
			if !errors.Is(err, tc.want) || providers.IsRevocation(err) != tc.revocation {
				t.Fatalf("Check() = %v (revocation %v), want %v (revocation %v)", err, providers.IsRevocation(err), tc.want, tc.revocation)
			}
			_, cerr := p.Current()
			if tc.revocation && !errors.Is(cerr, tc.want) {
				t.Errorf("Current() after revocation = %v, want %v", cerr, tc.want)
			}
			if !tc.revocation && cerr != nil {
				t.Errorf("Current() after transient trouble = %v, want the last known key", cerr)
			}
		})
	}
}

func TestCheckRejectsKeyWithoutAssociatedData(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	fb.readKey = func(context.Context) (keyMetadata, error) {
		m, _ := fb.mem.metadata()
		m.Type = "rsa-2048"
		return m, nil
	}
	if err := p.Check(context.Background()); !errors.Is(err, providers.ErrNotConfigured) {
		t.Errorf("Check() with an rsa key = %v, want %v", err, providers.ErrNotConfigured)
	}
}

func TestRetriesTransientErrorsWithinDeadline(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	key, _ := p.Current()
	ct, _ := p.Encrypt(context.Background(), key, []byte("x"), nil)

	failures := 2
	fb.decrypt = func(ctx context.Context, s string, ad []byte) ([]byte, error) {
		if failures > 0 {
			failures--
			return nil, &api.ResponseError{StatusCode: 503, Errors: []string{"Vault is sealed"}}
		}
		return fb.mem.decrypt(s, ad)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if got, err := p.Decrypt(ctx, key, ct, nil); err != nil || string(got) != "x" {
		t.Fatalf("Decrypt() after 2 transient failures = %q, %v; want %q", got, err, "x")
	}
	if n := fb.calls("decrypt"); n != 3 {
		t.Errorf("Vault decrypt calls = %d, want 3", n)
	}

	// Always failing: bounded attempts, ErrUnavailable, before the deadline.
	fb.decrypt = func(ctx context.Context, s string, ad []byte) ([]byte, error) {
		return nil, errors.New("connection refused")
	}
	before := fb.calls("decrypt")
	_, err := p.Decrypt(ctx, key, ct, nil)
	if !errors.Is(err, providers.ErrUnavailable) {
		t.Errorf("Decrypt() against a dead Vault = %v, want %v", err, providers.ErrUnavailable)
	}
	if ctx.Err() != nil {
		t.Errorf("Decrypt() returned only after the caller's deadline")
	}
	if n := fb.calls("decrypt") - before; n != maxAttempts {
		t.Errorf("Vault decrypt attempts = %d, want %d", n, maxAttempts)
	}

	// Not retried: a user error.
	fb.decrypt = func(ctx context.Context, s string, ad []byte) ([]byte, error) {
		return nil, &api.ResponseError{StatusCode: 400, Errors: []string{"cipher: message authentication failed"}}
	}
	before = fb.calls("decrypt")
	if _, err := p.Decrypt(ctx, key, ct, nil); !errors.Is(err, providers.ErrInvalidCiphertext) {
		t.Errorf("Decrypt() = %v, want %v", err, providers.ErrInvalidCiphertext)
	}
	if n := fb.calls("decrypt") - before; n != 1 {
		t.Errorf("Vault decrypt attempts for invalid ciphertext = %d, want 1", n)
	}
}

func TestRetriesStopAtCallerDeadline(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	key, _ := p.Current()
	fb.encrypt = func(ctx context.Context, v int64, pt, ad []byte) (string, error) {
		<-ctx.Done() // Vault hangs
		return "", ctx.Err()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := p.Encrypt(ctx, key, []byte("x"), nil); !errors.Is(err, providers.ErrUnavailable) {
		t.Errorf("Encrypt() against a hanging Vault = %v, want %v", err, providers.ErrUnavailable)
	}
}

func TestRevokedTokenTriggersOneRelogin(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	key, _ := p.Current()
	revoked := fb.currentToken()
	denied := &api.ResponseError{StatusCode: 403, Errors: []string{"permission denied"}}
	fb.encrypt = func(ctx context.Context, v int64, pt, ad []byte) (string, error) {
		if fb.currentToken() == revoked {
			return "", denied
		}
		return fb.mem.encrypt(v, pt, ad)
	}
	// The first login happened in New; minReloginInterval has not passed.
	p.sess.mu.Lock()
	p.sess.lastLogin = time.Now().Add(-time.Minute)
	p.sess.mu.Unlock()
	if _, err := p.Encrypt(context.Background(), key, []byte("x"), nil); err != nil {
		t.Fatalf("Encrypt() with a revoked token = %v, want success after re-login", err)
	}
	if n := fb.calls("login"); n != 2 {
		t.Errorf("logins = %d, want 2", n)
	}

	// A policy that really denies: one re-login attempt at most, then the
	// denial.
	fb.encrypt = func(ctx context.Context, v int64, pt, ad []byte) (string, error) { return "", denied }
	for range 3 {
		if _, err := p.Encrypt(context.Background(), key, []byte("x"), nil); !errors.Is(err, providers.ErrPermissionDenied) {
			t.Fatalf("Encrypt() denied by policy = %v, want %v", err, providers.ErrPermissionDenied)
		}
	}
	if n := fb.calls("login"); n != 2 {
		t.Errorf("logins after repeated denials within %v = %d, want 2", minReloginInterval, n)
	}
}

func TestConcurrentIdenticalDecryptsAreCoalesced(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	key, _ := p.Current()
	ct, _ := p.Encrypt(context.Background(), key, []byte("seed"), []byte("aad"))

	const n = 100
	release := make(chan struct{})
	var started sync.Once
	startedCh := make(chan struct{})
	fb.decrypt = func(ctx context.Context, s string, ad []byte) ([]byte, error) {
		started.Do(func() { close(startedCh) })
		<-release
		return fb.mem.decrypt(s, ad)
	}
	var wg sync.WaitGroup
	var entered atomic.Int32
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			entered.Add(1)
			got, err := p.Decrypt(context.Background(), key, ct, []byte("aad"))
			if err == nil && string(got) != "seed" {
				err = fmt.Errorf("got %q", got)
			}
			errs <- err
		}()
	}
	<-startedCh
	// Give every goroutine time to join the call in flight before it
	// ends; a straggler would make a second call, which the bound allows.
	for entered.Load() < n {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Decrypt() = %v", err)
		}
	}
	if c := fb.calls("decrypt"); c > 2 {
		t.Errorf("%d concurrent identical Decrypts made %d Vault calls, want at most 2", n, c)
	}
}

func TestDecryptCache(t *testing.T) {
	t.Run("off by default", func(t *testing.T) {
		if DefaultConfig().DecryptCacheSize != 0 {
			t.Fatalf("DefaultConfig().DecryptCacheSize = %d, want 0", DefaultConfig().DecryptCacheSize)
		}
		fb := &fakeBackend{}
		p := newTestProvider(t, testConfig(t), fb)
		key, _ := p.Current()
		ct, _ := p.Encrypt(context.Background(), key, []byte("x"), nil)
		for range 3 {
			if _, err := p.Decrypt(context.Background(), key, ct, nil); err != nil {
				t.Fatal(err)
			}
		}
		if n := fb.calls("decrypt"); n != 3 {
			t.Errorf("Vault decrypt calls = %d, want 3 (no cache)", n)
		}
	})
	t.Run("on: hits, and retirement drops entries", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.DecryptCacheSize, cfg.DecryptCacheTTL = 10, time.Hour
		fb := &fakeBackend{}
		p := newTestProvider(t, cfg, fb)
		key, _ := p.Current()
		ct, _ := p.Encrypt(context.Background(), key, []byte("x"), nil)
		for range 3 {
			got, err := p.Decrypt(context.Background(), key, ct, nil)
			if err != nil || string(got) != "x" {
				t.Fatalf("Decrypt() = %q, %v", got, err)
			}
			got[0] = 0 // callers may scribble on their copy
		}
		if n := fb.calls("decrypt"); n != 1 {
			t.Errorf("Vault decrypt calls = %d, want 1 (cached)", n)
		}
		if _, err := p.Rotate(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := p.RetireBelow(context.Background(), 2); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Decrypt(context.Background(), key, ct, nil); !errors.Is(err, providers.ErrKeyRetired) {
			t.Errorf("Decrypt(retired, was cached) = %v, want %v", err, providers.ErrKeyRetired)
		}
	})
}

func TestCacheBounds(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newDecryptCache(2, time.Minute, func() time.Time { return now })
	k := func(i int) cacheKey { return decryptCacheKey("id", 1, []byte{byte(i)}, nil) }
	c.put(k(1), 1, []byte("a"))
	c.put(k(2), 1, []byte("b"))
	c.get(k(1)) // 1 is now most recently used
	c.put(k(3), 1, []byte("c"))
	if _, ok := c.get(k(2)); ok {
		t.Errorf("least recently used entry survived past the size bound")
	}
	if _, ok := c.get(k(1)); !ok {
		t.Errorf("recently used entry was evicted")
	}
	now = now.Add(time.Minute)
	if _, ok := c.get(k(1)); ok {
		t.Errorf("entry served after its TTL")
	}
	if c.len() != 1 {
		t.Errorf("len() = %d, want 1", c.len())
	}
}

// TestConformanceWithFake runs the shared suite against the provider over
// the in-memory transit; the integration tests run it against Vault.
func TestConformanceWithFake(t *testing.T) {
	providertest.Run(t, func(t *testing.T) providers.Provider {
		p, err := newProvider(context.Background(), testConfig(t), &fakeBackend{mem: newMemTransit()}, providers.Env{}, time.Now)
		if err != nil {
			t.Fatalf("newProvider: %v", err)
		}
		return p
	})
}

func TestEncryptRefusedOnceKeyIsKnownDeleted(t *testing.T) {
	fb := &fakeBackend{}
	p := newTestProvider(t, testConfig(t), fb)
	key, _ := p.Current()
	fb.mem.mu.Lock()
	fb.mem.deleted = true
	fb.mem.mu.Unlock()
	if err := p.Check(context.Background()); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Fatalf("Check() after deletion = %v, want %v", err, providers.ErrKeyNotFound)
	}
	before := fb.calls("encrypt")
	if _, err := p.Encrypt(context.Background(), key, []byte("x"), nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("Encrypt() after deletion = %v, want %v", err, providers.ErrKeyNotFound)
	}
	if n := fb.calls("encrypt") - before; n != 0 {
		t.Errorf("Encrypt() after deletion made %d Vault calls, want 0 (transit could recreate the key)", n)
	}
}

// TestCurrentNamesWhyVaultIsUnreachable: a plugin that has not read the
// key yet says why, so that kmsctl status shows the cause and not only
// "not read yet".
func TestCurrentNamesWhyVaultIsUnreachable(t *testing.T) {
	fb := &fakeBackend{}
	fb.readKey = func(context.Context) (keyMetadata, error) {
		return keyMetadata{}, fmt.Errorf("dial tcp 127.0.0.1:8200: connect: connection refused")
	}
	p := newTestProvider(t, testConfig(t), fb)
	_, err := p.Current()
	if !errors.Is(err, providers.ErrUnavailable) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Current() before any metadata = %v, want unavailable naming the cause", err)
	}
}
