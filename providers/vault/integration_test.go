//go:build integration

package vault

// Tests against a real Vault server, started by test/vaultserver from a
// binary built from the Go module proxy. Run them with
//
//	go test -tags integration ./providers/vault

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/providertest"
	"github.com/kms-plugin/kms-plugin/test/testbin"
	"github.com/kms-plugin/kms-plugin/test/vaultserver"
)

// devVault starts a dev server with transit at "transit" and key "kms".
func devVault(t *testing.T) *vaultserver.Server {
	t.Helper()
	s := vaultserver.StartTransit(t, vaultserver.Options{}, "transit", "kms")
	return s
}

// baseConfig is a config for s that ignores the VAULT_* environment.
func baseConfig(s *vaultserver.Server, key string) Config {
	c := Config{
		Addr:            s.Addr,
		Mount:           "transit",
		Key:             key,
		Auth:            AuthToken,
		Token:           s.RootToken,
		Timeout:         2 * time.Second,
		RefreshInterval: 200 * time.Millisecond,
		DecryptCacheTTL: time.Minute,
		BatchDecrypt:    DefaultConfig().BatchDecrypt,
	}
	if s.TLS != nil {
		c.CACert = s.TLS.CACert
	}
	return c
}

// logSink sends the provider's logs to the test log and keeps them, so a
// test can check that no secret was logged.
type logSink struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
	all  strings.Builder
}

func (w *logSink) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(b)
	if !w.done {
		w.t.Log(strings.TrimSpace(string(b)))
	}
	return len(b), nil
}

func (w *logSink) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

var sinks sync.Map // *testing.T -> *logSink

func testLogger(t *testing.T) *slog.Logger {
	w := &logSink{t: t}
	sinks.Store(t, w)
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// assertNotLogged fails if any secret appears in the test's provider logs.
func assertNotLogged(t *testing.T, secrets ...string) {
	t.Helper()
	v, ok := sinks.Load(t)
	if !ok {
		t.Fatal("no provider logs captured")
	}
	logs := v.(*logSink).String()
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("a secret appears in the provider's logs")
		}
	}
}

func startProvider(t *testing.T, cfg Config, reg prometheus.Registerer) *Provider {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := New(ctx, cfg, providers.Env{Logger: testLogger(t), Metrics: reg})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second) // the apiserver's default
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or 30 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func seal(t *testing.T, p *Provider, pt, aad []byte) (providers.Key, []byte) {
	t.Helper()
	k, err := p.Current()
	if err != nil {
		t.Fatalf("Current() = %v", err)
	}
	ct, err := p.Encrypt(callCtx(t), k, pt, aad)
	if err != nil {
		t.Fatalf("Encrypt() = %v", err)
	}
	return k, ct
}

func mustOpen(t *testing.T, p *Provider, k providers.Key, ct, aad, want []byte) {
	t.Helper()
	got, err := p.Decrypt(callCtx(t), k, ct, aad)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Decrypt(%s) = %q, %v; want %q", k.ID, got, err, want)
	}
}

func TestIntegrationConformance(t *testing.T) {
	s := vaultserver.Start(t, vaultserver.Options{})
	s.EnableTransit(t, "transit")
	var n atomic.Int32
	providertest.Run(t, func(t *testing.T) providers.Provider {
		name := fmt.Sprintf("conformance-%d", n.Add(1))
		s.CreateKey(t, "transit", name)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p, err := New(ctx, baseConfig(s, name), providers.Env{})
		if err != nil {
			t.Fatalf("New() = %v", err)
		}
		return p
	})
}

func TestIntegrationRoundTripAndKeyIDFormat(t *testing.T) {
	s := devVault(t)
	p := startProvider(t, baseConfig(s, "kms"), nil)
	k, ct := seal(t, p, []byte("a 32-byte DEK seed, more or less"), []byte("hdr"))
	sec, err := s.Client(t).Logical().Read("transit/keys/kms")
	if err != nil {
		t.Fatal(err)
	}
	created := sec.Data["keys"].(map[string]any)["1"].(json.Number)
	if want := "vault:transit/kms:v1:" + created.String(); k.ID != want {
		t.Errorf("key_id = %q, want %q", k.ID, want)
	}
	if len(ct) > 100 {
		t.Errorf("ciphertext of a 32-byte seed is %d bytes; want it compact", len(ct))
	}
	mustOpen(t, p, k, ct, []byte("hdr"), []byte("a 32-byte DEK seed, more or less"))
	if _, err := p.Decrypt(callCtx(t), k, ct, []byte("other")); !errors.Is(err, providers.ErrInvalidCiphertext) {
		t.Errorf("Decrypt(other aad) = %v, want %v", err, providers.ErrInvalidCiphertext)
	}
}

// TestIntegrationRotateWhileServing rotates the key with Vault's own API
// while requests flow: the new key_id shows up without a restart, no
// request fails, and old ciphertexts still decrypt.
func TestIntegrationRotateWhileServing(t *testing.T) {
	s := devVault(t)
	reg := prometheus.NewRegistry()
	p := startProvider(t, baseConfig(s, "kms"), reg)
	k1, ct1 := seal(t, p, []byte("before rotation"), nil)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served atomic.Int64
	errs := make(chan error, 100)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				k, err := p.Current()
				if err != nil {
					errs <- err
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				ct, err := p.Encrypt(ctx, k, []byte("during"), nil)
				if err == nil {
					_, err = p.Decrypt(ctx, k, ct, nil)
				}
				cancel()
				if err != nil {
					errs <- err
					return
				}
				served.Add(1)
			}
		}()
	}
	if _, err := s.Client(t).Logical().Write("transit/keys/kms/rotate", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the rotated key to become current", func() bool {
		k, err := p.Current()
		return err == nil && string(k.Ref) == "2"
	})
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("request during rotation failed: %v", err)
	}
	if served.Load() == 0 {
		t.Errorf("no request was served during the rotation")
	}
	k2, _ := p.Current()
	if k2.ID == k1.ID {
		t.Fatalf("key_id did not change: %q", k2.ID)
	}
	mustOpen(t, p, k1, ct1, nil, []byte("before rotation"))
	if v := gaugeValue(t, reg, "kms_plugin_vault_key_version"); v != 2 {
		t.Errorf("kms_plugin_vault_key_version = %v, want 2", v)
	}
}

func TestIntegrationRetireGivesMappedError(t *testing.T) {
	s := devVault(t)
	p := startProvider(t, baseConfig(s, "kms"), nil)
	k1, ct1 := seal(t, p, []byte("old"), nil)
	root := s.Client(t)
	if _, err := root.Logical().Write("transit/keys/kms/rotate", nil); err != nil {
		t.Fatal(err)
	}
	// Retired with Vault's own API, behind the provider's back.
	if _, err := root.Logical().Write("transit/keys/kms/config", map[string]any{"min_decryption_version": 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Decrypt(callCtx(t), k1, ct1, nil); !errors.Is(err, providers.ErrKeyRetired) {
		t.Errorf("Decrypt(retired version) = %v, want %v", err, providers.ErrKeyRetired)
	}
	if err := p.RetireBelow(callCtx(t), 3); !errors.Is(err, providers.ErrInvalidArgument) {
		t.Errorf("RetireBelow(3) with latest 2 = %v, want %v", err, providers.ErrInvalidArgument)
	}

	// Un-retiring (as docs/vault.md describes) brings the version back
	// with its creation time, hence the same key_id.
	if _, err := root.Logical().Write("transit/keys/kms/config", map[string]any{"min_decryption_version": 1}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the un-retired version to decrypt again", func() bool {
		got, err := p.Decrypt(callCtx(t), k1, ct1, nil)
		return err == nil && string(got) == "old"
	})
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func pluginPolicy(t *testing.T, s *vaultserver.Server, key string) string {
	t.Helper()
	hcl, err := Policy(RolePlugin, "transit", key)
	if err != nil {
		t.Fatal(err)
	}
	s.WritePolicy(t, "kms-plugin", hcl)
	return "kms-plugin"
}

// TestIntegrationShortTTLTokenIsRenewed uses AppRole tokens that live 3 s
// and keeps serving for longer than that: the session renews the token.
func TestIntegrationShortTTLTokenIsRenewed(t *testing.T) {
	s := devVault(t)
	ar := s.EnableAppRole(t, pluginPolicy(t, s, "kms"), 3*time.Second)
	roleID, secretID := ar.RoleIDFile, ar.SecretIDFile
	cfg := baseConfig(s, "kms")
	cfg.Auth, cfg.Token, cfg.RoleIDFile, cfg.SecretIDFile = AuthAppRole, "", roleID, secretID
	cfg.RefreshInterval = time.Hour // only the session touches the token
	reg := prometheus.NewRegistry()
	p := startProvider(t, cfg, reg)
	k, ct := seal(t, p, []byte("renew me"), nil)

	// Serve until two renewals happened: by then the first token's
	// original 3 s lifetime is over.
	eventually(t, "two token renewals", func() bool {
		mustOpen(t, p, k, ct, nil, []byte("renew me"))
		return counterValue(t, reg, "kms_plugin_vault_token_renewals_total", "result", "ok") >= 2
	})
	mustOpen(t, p, k, ct, nil, []byte("renew me"))
	if n := counterValue(t, reg, "kms_plugin_vault_logins_total", "result", "ok"); n != 1 {
		t.Errorf("logins = %v, want 1 (renewal, not re-login, kept the token alive)", n)
	}
	if ttl := gaugeValue(t, reg, "kms_plugin_vault_token_ttl_seconds"); ttl <= 0 || ttl > 3 {
		t.Errorf("kms_plugin_vault_token_ttl_seconds = %v, want in (0, 3]", ttl)
	}
}

// TestIntegrationRevokedTokenTriggersAppRoleRelogin revokes every token
// AppRole issued; the next request logs in again and succeeds.
func TestIntegrationRevokedTokenTriggersAppRoleRelogin(t *testing.T) {
	s := devVault(t)
	ar := s.EnableAppRole(t, pluginPolicy(t, s, "kms"), time.Hour)
	roleID, secretID := ar.RoleIDFile, ar.SecretIDFile
	cfg := baseConfig(s, "kms")
	cfg.Auth, cfg.Token, cfg.RoleIDFile, cfg.SecretIDFile = AuthAppRole, "", roleID, secretID
	cfg.RefreshInterval = time.Hour
	reg := prometheus.NewRegistry()
	p := startProvider(t, cfg, reg)
	k, ct := seal(t, p, []byte("after revocation"), nil)

	// The provider logs in again at most once per minReloginInterval.
	time.Sleep(minReloginInterval)
	if _, err := s.Client(t).Logical().Write("sys/leases/revoke-prefix/auth/approle/login", nil); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, p, k, ct, nil, []byte("after revocation"))
	if n := counterValue(t, reg, "kms_plugin_vault_logins_total", "result", "ok"); n != 2 {
		t.Errorf("logins = %v, want 2", n)
	}
	if err := p.Check(callCtx(t)); err != nil {
		t.Errorf("Check() after re-login = %v", err)
	}
}

// TestIntegrationTokenFileRewritten swaps the token in the file and
// revokes the old one: the provider switches without a restart.
func TestIntegrationTokenFileRewritten(t *testing.T) {
	s := devVault(t)
	policy := pluginPolicy(t, s, "kms")
	root := s.Client(t)
	newToken := func() string {
		sec, err := root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{policy}, TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		return sec.Auth.ClientToken
	}
	file := filepath.Join(t.TempDir(), "token")
	first := newToken()
	writeFile(t, file, first+"\n")
	cfg := baseConfig(s, "kms")
	cfg.Token, cfg.TokenFile = "", file
	p := startProvider(t, cfg, nil)
	k, ct := seal(t, p, []byte("x"), nil)

	writeFile(t, file, newToken())
	if err := root.Auth().Token().RevokeTree(first); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, p, k, ct, nil, []byte("x"))
	second, _ := os.ReadFile(file)
	assertNotLogged(t, first, string(second))
}

// TestIntegrationJWTAuthWithStaticKeys logs in with a JWT signed by a key
// that Vault knows from jwt_validation_pubkeys, and checks that the plugin
// policy is enough to serve and too little to rotate.
func TestIntegrationJWTAuthWithStaticKeys(t *testing.T) {
	s := devVault(t)
	policy := pluginPolicy(t, s, "kms")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))
	root := s.Client(t)
	if err := root.Sys().EnableAuthWithOptions("jwt", &api.EnableAuthOptions{Type: "jwt"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().Write("auth/jwt/config", map[string]any{
		"jwt_validation_pubkeys": []string{pubPEM},
		"bound_issuer":           "https://issuer.test",
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().Write("auth/jwt/role/kms-plugin", map[string]any{
		"role_type":       "jwt",
		"bound_audiences": []string{"vault"},
		"user_claim":      "sub",
		"bound_subject":   "system:serviceaccount:kube-system:kms-plugin",
		"token_policies":  []string{policy},
		"token_ttl":       "1h",
	}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	jwtFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, jwtFile, signES256(t, key, map[string]any{
		"iss": "https://issuer.test",
		"sub": "system:serviceaccount:kube-system:kms-plugin",
		"aud": "vault",
		"iat": now.Unix(),
		"nbf": now.Add(-time.Minute).Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}))
	cfg := baseConfig(s, "kms")
	cfg.Auth, cfg.Token, cfg.Role, cfg.JWTFile = AuthJWT, "", "kms-plugin", jwtFile
	p := startProvider(t, cfg, nil)
	k, ct := seal(t, p, []byte("jwt"), nil)
	mustOpen(t, p, k, ct, nil, []byte("jwt"))
	if err := p.Check(callCtx(t)); err != nil {
		t.Errorf("Check() = %v", err)
	}
	if _, err := p.Rotate(callCtx(t)); !errors.Is(err, providers.ErrPermissionDenied) {
		t.Errorf("Rotate() with the plugin policy = %v, want %v", err, providers.ErrPermissionDenied)
	}
	jwt, _ := os.ReadFile(jwtFile)
	assertNotLogged(t, string(jwt))

	// A JWT for another subject is refused at login: New fails.
	writeFile(t, jwtFile, signES256(t, key, map[string]any{
		"iss": "https://issuer.test", "sub": "someone-else", "aud": "vault",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}))
	if _, err := New(callCtx(t), cfg, providers.Env{}); !errors.Is(err, providers.ErrPermissionDenied) {
		t.Errorf("New() with a JWT for another subject = %v, want %v", err, providers.ErrPermissionDenied)
	}
}

func signES256(t *testing.T, key *ecdsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]string{"alg": "ES256", "typ": "JWT"}) + "." + enc(claims)
	digest := sha256.Sum256([]byte(signing))
	r, sv, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	sv.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestIntegrationTLSAndCertAuth talks HTTPS to a server whose certificate
// comes from a generated CA and logs in with a TLS client certificate.
func TestIntegrationTLSAndCertAuth(t *testing.T) {
	s := vaultserver.StartTransit(t, vaultserver.Options{TLS: true}, "transit", "kms")
	policy := pluginPolicy(t, s, "kms")
	root := s.Client(t)
	if err := root.Sys().EnableAuthWithOptions("cert", &api.EnableAuthOptions{Type: "cert"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().Write("auth/cert/certs/kms-plugin", map[string]any{
		"certificate":    string(s.TLS.CAPEM),
		"token_policies": []string{policy},
		"token_ttl":      "1h",
	}); err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(s, "kms")
	cfg.Auth, cfg.Token, cfg.Role = AuthCert, "", "kms-plugin"
	cfg.ClientCert, cfg.ClientKey = s.TLS.ClientCert, s.TLS.ClientKey
	p := startProvider(t, cfg, nil)
	k, ct := seal(t, p, []byte("over TLS"), nil)
	mustOpen(t, p, k, ct, nil, []byte("over TLS"))
	if err := p.Check(callCtx(t)); err != nil {
		t.Errorf("Check() = %v", err)
	}

	// Without the CA, Vault's certificate is not trusted: nothing works,
	// and the provider says it is unavailable rather than revoked.
	bad := cfg
	bad.CACert = ""
	pb, err := New(callCtx(t), bad, providers.Env{})
	if err != nil {
		t.Fatalf("New() without the CA = %v, want a provider that reports unavailable", err)
	}
	defer pb.Close()
	if err := pb.Check(callCtx(t)); !errors.Is(err, providers.ErrUnavailable) {
		t.Errorf("Check() without the CA = %v, want %v", err, providers.ErrUnavailable)
	}
}

// TestIntegrationVaultStoppedMidLoad stops a file-storage Vault while
// decrypts run: they fail with ErrUnavailable inside their deadline and
// Check reports unavailable (not revoked); after a restart everything
// recovers, key_ids are unchanged, and no decrypt fails.
func TestIntegrationVaultStoppedMidLoad(t *testing.T) {
	s := vaultserver.StartTransit(t, vaultserver.Options{FileStorage: true}, "transit", "kms")
	cfg := baseConfig(s, "kms")
	cfg.Timeout = 500 * time.Millisecond
	p := startProvider(t, cfg, nil)
	type sealed struct {
		k      providers.Key
		ct, pt []byte
	}
	var items []sealed
	for i := range 8 {
		pt := fmt.Appendf(nil, "seed %d", i)
		k, ct := seal(t, p, pt, nil)
		items = append(items, sealed{k, ct, pt})
	}

	var stopped atomic.Bool
	stopLoad := make(chan struct{})
	var wg sync.WaitGroup
	var okDuring, unavailableDuring atomic.Int64
	bad := make(chan error, 100)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i++ {
				select {
				case <-stopLoad:
					return
				default:
				}
				it := items[i%len(items)]
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				got, err := p.Decrypt(ctx, it.k, it.ct, nil)
				late := ctx.Err() != nil
				cancel()
				switch {
				case err == nil && bytes.Equal(got, it.pt):
					okDuring.Add(1)
				case err != nil && stopped.Load() && errors.Is(err, providers.ErrUnavailable) && !late:
					unavailableDuring.Add(1)
				default:
					bad <- fmt.Errorf("Decrypt = %q, %v (vault stopped %v, after deadline %v)", got, err, stopped.Load(), late)
					return
				}
			}
		}()
	}
	eventually(t, "some decrypts to succeed", func() bool { return okDuring.Load() > 20 })
	stopped.Store(true)
	s.Stop(t)
	eventually(t, "decrypts to fail as unavailable", func() bool { return unavailableDuring.Load() > 8 })
	close(stopLoad)
	wg.Wait()
	close(bad)
	for err := range bad {
		t.Error(err)
	}

	err := p.Check(callCtx(t))
	if !errors.Is(err, providers.ErrUnavailable) || providers.IsRevocation(err) {
		t.Errorf("Check() with Vault down = %v, want %v and not a revocation", err, providers.ErrUnavailable)
	}
	if _, err := p.Current(); err != nil {
		t.Errorf("Current() with Vault down = %v, want the last known key", err)
	}

	s.Restart(t)
	eventually(t, "Check to pass after restart", func() bool { return p.Check(callCtx(t)) == nil })
	for i := range 100 {
		it := items[i%len(items)]
		mustOpen(t, p, it.k, it.ct, nil, it.pt)
	}
	// A fresh provider after the restart computes the same key_id.
	p2 := startProvider(t, cfg, nil)
	if k, _ := p2.Current(); k.ID != items[0].k.ID {
		t.Errorf("key_id after restart = %q, want %q", k.ID, items[0].k.ID)
	}
}

func TestIntegrationSealed(t *testing.T) {
	s := devVault(t)
	if s.UnsealKey == "" {
		t.Fatal("dev server printed no unseal key")
	}
	p := startProvider(t, baseConfig(s, "kms"), nil)
	k, ct := seal(t, p, []byte("sealed"), nil)
	s.Seal(t)
	ctx := callCtx(t)
	if _, err := p.Decrypt(ctx, k, ct, nil); !errors.Is(err, providers.ErrUnavailable) || ctx.Err() != nil {
		t.Errorf("Decrypt() while sealed = %v (deadline passed: %v), want %v inside the deadline", err, ctx.Err() != nil, providers.ErrUnavailable)
	}
	if err := p.Check(callCtx(t)); !errors.Is(err, providers.ErrUnavailable) || providers.IsRevocation(err) {
		t.Errorf("Check() while sealed = %v, want %v and not a revocation", err, providers.ErrUnavailable)
	}
	s.Unseal(t)
	eventually(t, "Check to pass after unseal", func() bool { return p.Check(callCtx(t)) == nil })
	mustOpen(t, p, k, ct, nil, []byte("sealed"))
}

// TestIntegrationKeyDeletedFailsClosed deletes the transit key: Check
// returns a revocation-class error and Current fails. A key recreated
// under the same name gets new key_ids, and old ciphertexts do not pass
// for it.
func TestIntegrationKeyDeletedFailsClosed(t *testing.T) {
	s := devVault(t)
	p := startProvider(t, baseConfig(s, "kms"), nil)
	k1, ct1 := seal(t, p, []byte("doomed"), nil)
	root := s.Client(t)
	if _, err := root.Logical().Write("transit/keys/kms/config", map[string]any{"deletion_allowed": true}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().Delete("transit/keys/kms"); err != nil {
		t.Fatal(err)
	}
	err := p.Check(callCtx(t))
	if !providers.IsRevocation(err) || !errors.Is(err, providers.ErrKeyNotFound) {
		t.Fatalf("Check() after deletion = %v, want %v (a revocation)", err, providers.ErrKeyNotFound)
	}
	if _, err := p.Current(); !providers.IsRevocation(err) {
		t.Errorf("Current() after deletion = %v, want a revocation error", err)
	}
	if _, err := p.Decrypt(callCtx(t), k1, ct1, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("Decrypt() after deletion = %v, want %v", err, providers.ErrKeyNotFound)
	}

	// Recreate under the same name, in a later second than version 1 was
	// made (key_ids have one-second resolution).
	created := time.Unix(keyCreated(t, k1.ID), 0)
	for !time.Now().After(created.Add(time.Second)) {
		time.Sleep(100 * time.Millisecond)
	}
	s.CreateKey(t, "transit", "kms")
	eventually(t, "the recreated key to become current", func() bool { return p.Check(callCtx(t)) == nil })
	k2, err := p.Current()
	if err != nil {
		t.Fatal(err)
	}
	if k2.ID == k1.ID || string(k2.Ref) != "1" {
		t.Errorf("recreated key: key_id %q (ref %q), old %q; want a new id for version 1", k2.ID, k2.Ref, k1.ID)
	}
	if _, err := p.Decrypt(callCtx(t), k1, ct1, nil); !errors.Is(err, providers.ErrInvalidCiphertext) {
		t.Errorf("Decrypt(ciphertext of the deleted key) = %v, want %v", err, providers.ErrInvalidCiphertext)
	}
}

func keyCreated(t *testing.T, id string) int64 {
	t.Helper()
	var sec int64
	i := bytes.LastIndexByte([]byte(id), ':')
	if _, err := fmt.Sscan(id[i+1:], &sec); err != nil {
		t.Fatalf("key_id %q has no creation time", id)
	}
	return sec
}

// TestIntegrationConcurrentDecryptsAreCoalesced sends 100 identical
// Decrypts at once and counts Vault decrypt requests at a proxy.
func TestIntegrationConcurrentDecryptsAreCoalesced(t *testing.T) {
	s := devVault(t)
	proxy := vaultserver.NewProxy(t, s.Addr)
	cfg := baseConfig(s, "kms")
	cfg.Addr = proxy.URL
	cfg.RefreshInterval = time.Hour
	p := startProvider(t, cfg, nil)
	k, ct := seal(t, p, []byte("storm"), []byte("hdr"))

	const n = 100
	before := proxy.Count("/v1/transit/decrypt/kms")
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			got, err := p.Decrypt(ctx, k, ct, []byte("hdr"))
			if err == nil && string(got) != "storm" {
				err = fmt.Errorf("got %q", got)
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Decrypt() = %v", err)
		}
	}
	if got := proxy.Count("/v1/transit/decrypt/kms") - before; got > 2 || got < 1 {
		t.Errorf("%d concurrent identical Decrypts made %d Vault decrypt requests, want 1 or 2", n, got)
	}
}

// TestIntegrationBatchDecryptOnRealVault fires 300 concurrent Decrypts of
// distinct ciphertexts, every tenth with the wrong associated data, at a
// real Vault: each good one must come back with its own plaintext, each bad
// one must fail as an invalid ciphertext (transit answers such a batch with
// HTTP 400 and per-item errors), and the burst must take fewer requests
// than calls.
func TestIntegrationBatchDecryptOnRealVault(t *testing.T) {
	s := devVault(t)
	proxy := vaultserver.NewProxy(t, s.Addr)
	cfg := baseConfig(s, "kms")
	cfg.Addr = proxy.URL
	cfg.RefreshInterval = time.Hour
	if !cfg.BatchDecrypt {
		t.Fatal("batch decrypt is not on by default")
	}
	p := startProvider(t, cfg, nil)
	const n = 300
	type item struct {
		k   providers.Key
		ct  []byte
		pt  string
		aad []byte
	}
	items := make([]item, n)
	for i := range items {
		pt := fmt.Sprintf("seed-%03d", i)
		k, ct := seal(t, p, []byte(pt), []byte("hdr"))
		aad := []byte("hdr")
		if i%10 == 0 {
			aad = []byte("another object's header")
		}
		items[i] = item{k, ct, pt, aad}
	}
	before := proxy.Count("/v1/transit/decrypt/kms")
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, it := range items {
		wg.Go(func() {
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := p.Decrypt(ctx, it.k, it.ct, it.aad)
			switch {
			case i%10 == 0 && !errors.Is(err, providers.ErrInvalidCiphertext):
				errs <- fmt.Errorf("Decrypt %d with the wrong associated data = %q, %v; want invalid ciphertext", i, got, err)
			case i%10 != 0 && (err != nil || string(got) != it.pt):
				errs <- fmt.Errorf("Decrypt %d = %q, %v; want %q", i, got, err, it.pt)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	reqs := proxy.Count("/v1/transit/decrypt/kms") - before
	t.Logf("%d concurrent distinct Decrypts made %d Vault decrypt requests", n, reqs)
	if reqs >= n {
		t.Errorf("%d concurrent distinct Decrypts made %d Vault requests: none was batched", n, reqs)
	}
}

// Metrics helpers: read one series from a registry.

func gather(t *testing.T, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	var sum float64
	for _, m := range gather(t, reg, name) {
		for _, l := range m.GetLabel() {
			if l.GetName() == label && l.GetValue() == value {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	ms := gather(t, reg, name)
	if len(ms) != 1 {
		t.Fatalf("%s: %d series, want 1", name, len(ms))
	}
	return ms[0].GetGauge().GetValue()
}

// TestIntegrationDeployScripts runs deploy/vault/setup-transit.sh and
// setup-approle.sh with the real vault CLI against a dev server, then
// serves with the credentials they wrote and the policy they loaded.
func TestIntegrationDeployScripts(t *testing.T) {
	s := vaultserver.Start(t, vaultserver.Options{})
	bin := testbin.Tool(t, "vault", "vault")
	scripts := filepath.Join(testbin.RepoRoot(), "deploy", "vault")
	out := filepath.Join(t.TempDir(), "creds")
	run := func(script string, args ...string) {
		t.Helper()
		cmd := exec.Command("bash", append([]string{filepath.Join(scripts, script)}, args...)...)
		cmd.Env = []string{
			"PATH=" + filepath.Dir(bin) + ":" + os.Getenv("PATH"),
			"HOME=" + t.TempDir(),
			"VAULT_ADDR=" + s.Addr,
			"VAULT_TOKEN=" + s.RootToken,
		}
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", script, err, b)
		}
	}
	run("setup-transit.sh")
	run("setup-transit.sh") // idempotent
	run("setup-approle.sh", out)
	for _, f := range []string{"role-id", "secret-id"} {
		fi, err := os.Stat(filepath.Join(out, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want a 0600 file", f, err, fi.Mode().Perm())
		}
	}
	cfg := baseConfig(s, "kms-plugin")
	cfg.Auth, cfg.Token = AuthAppRole, ""
	cfg.RoleIDFile, cfg.SecretIDFile = filepath.Join(out, "role-id"), filepath.Join(out, "secret-id")
	p := startProvider(t, cfg, nil)
	k, ct := seal(t, p, []byte("deployed"), nil)
	mustOpen(t, p, k, ct, nil, []byte("deployed"))
	if err := p.Check(callCtx(t)); err != nil {
		t.Errorf("Check() = %v", err)
	}
	if _, err := p.Rotate(callCtx(t)); !errors.Is(err, providers.ErrPermissionDenied) {
		t.Errorf("Rotate() with the deployed plugin policy = %v, want %v", err, providers.ErrPermissionDenied)
	}
	if err := p.RetireBelow(callCtx(t), 1); !errors.Is(err, providers.ErrPermissionDenied) {
		t.Errorf("RetireBelow() with the deployed plugin policy = %v, want %v", err, providers.ErrPermissionDenied)
	}
}

// TestIntegrationAccessRevokedFailsClosed deletes the plugin's policy:
// Check reports a revocation (after one re-login attempt still denied),
// and restoring the policy heals the provider without a restart.
func TestIntegrationAccessRevokedFailsClosed(t *testing.T) {
	s := devVault(t)
	ar := s.EnableAppRole(t, pluginPolicy(t, s, "kms"), time.Hour)
	roleID, secretID := ar.RoleIDFile, ar.SecretIDFile
	cfg := baseConfig(s, "kms")
	cfg.Auth, cfg.Token, cfg.RoleIDFile, cfg.SecretIDFile = AuthAppRole, "", roleID, secretID
	cfg.RefreshInterval = time.Hour
	p := startProvider(t, cfg, nil)
	k, ct := seal(t, p, []byte("revoked"), nil)

	root := s.Client(t)
	if err := root.Sys().DeletePolicy("kms-plugin"); err != nil {
		t.Fatal(err)
	}
	err := p.Check(callCtx(t))
	if !errors.Is(err, providers.ErrPermissionDenied) || !providers.IsRevocation(err) {
		t.Fatalf("Check() without a policy = %v, want %v (a revocation)", err, providers.ErrPermissionDenied)
	}
	if _, err := p.Decrypt(callCtx(t), k, ct, nil); !errors.Is(err, providers.ErrPermissionDenied) {
		t.Errorf("Decrypt() without a policy = %v, want %v", err, providers.ErrPermissionDenied)
	}

	pluginPolicy(t, s, "kms")
	if err := p.Check(callCtx(t)); err != nil {
		t.Errorf("Check() after restoring the policy = %v", err)
	}
	mustOpen(t, p, k, ct, nil, []byte("revoked"))
}
