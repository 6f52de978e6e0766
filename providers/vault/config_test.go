package vault

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/providers"
)

func TestDefaultConfigReadsVaultEnvironment(t *testing.T) {
	t.Setenv("VAULT_ADDR", "https://vault.example:8200")
	t.Setenv("VAULT_NAMESPACE", "team-a")
	t.Setenv("VAULT_TOKEN", "s.env-token")
	t.Setenv("VAULT_CACERT", "/etc/vault/ca.pem")
	t.Setenv("VAULT_SKIP_VERIFY", "true")
	c := DefaultConfig()
	if c.Addr != "https://vault.example:8200" || c.Namespace != "team-a" || c.Token != "s.env-token" ||
		c.CACert != "/etc/vault/ca.pem" || !c.TLSSkipVerify {
		t.Errorf("DefaultConfig() = %+v, want the VAULT_* values", c)
	}

	// Flags override the environment.
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"--vault-addr=https://other:8200", "--vault-tls-skip-verify=false", "--vault-key=k"}); err != nil {
		t.Fatal(err)
	}
	if c.Addr != "https://other:8200" || c.TLSSkipVerify || c.Key != "k" {
		t.Errorf("after flags: %+v", c)
	}
	if fs.Lookup("vault-token") != nil {
		t.Errorf("a --vault-token flag would put the token in the process listing")
	}
}

func TestVaultAddrFlagTakesACluster(t *testing.T) {
	t.Setenv("VAULT_ADDR", "https://from-env:8200")
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, []string{"https://from-env:8200"}},
		{[]string{"--vault-addr=https://a:8200"}, []string{"https://a:8200"}},
		{[]string{"--vault-addr=https://a:8200", "--vault-addr", "https://b:8200"}, []string{"https://a:8200", "https://b:8200"}},
		{[]string{"--vault-addr=https://a:8200,https://b:8200/", "--vault-addr=https://c:8200"}, []string{"https://a:8200", "https://b:8200", "https://c:8200"}},
	} {
		c := DefaultConfig()
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		c.RegisterFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if got := c.addrs(); !slices.Equal(got, tc.want) {
			t.Errorf("%q: addresses %q, want %q", tc.args, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.Addr, c.Key, c.Auth, c.Token = "http://127.0.0.1:8200", "kms", AuthToken, "tok"
		return c
	}
	tests := []struct {
		name   string
		modify func(*Config)
		ok     bool
	}{
		{"valid token", func(c *Config) {}, true},
		{"no addr", func(c *Config) { c.Addr = "" }, false},
		{"addr not a URL", func(c *Config) { c.Addr = "127.0.0.1:8200" }, false},
		{"cluster", func(c *Config) { c.Addr = "https://v1:8200, https://v2:8200,https://v3:8200/" }, true},
		{"one bad node", func(c *Config) { c.Addr = "https://v1:8200,v2:8200" }, false},
		{"node twice", func(c *Config) { c.Addr = "https://v1:8200,https://v1:8200/" }, false},
		{"addr with a path", func(c *Config) { c.Addr = "https://v1:8200/v1/transit" }, false},
		{"addr with credentials", func(c *Config) { c.Addr = "https://user:pw@v1:8200" }, false},
		{"no key", func(c *Config) { c.Key = "" }, false},
		{"key with slash", func(c *Config) { c.Key = "a/b" }, false},
		{"no mount", func(c *Config) { c.Mount = "/" }, false},
		{"token without token", func(c *Config) { c.Token = "" }, false},
		{"token file", func(c *Config) { c.Token, c.TokenFile = "", "/run/token" }, true},
		{"approle without role id", func(c *Config) { c.Auth = AuthAppRole }, false},
		{"approle", func(c *Config) { c.Auth, c.RoleIDFile, c.SecretIDFile = AuthAppRole, "/r", "/s" }, true},
		{"kubernetes without role", func(c *Config) { c.Auth = AuthKubernetes }, false},
		{"kubernetes", func(c *Config) { c.Auth, c.Role = AuthKubernetes, "kms" }, true},
		{"jwt without file", func(c *Config) { c.Auth, c.Role = AuthJWT, "kms" }, false},
		{"jwt", func(c *Config) { c.Auth, c.Role, c.JWTFile = AuthJWT, "kms", "/jwt" }, true},
		{"cert without cert", func(c *Config) { c.Auth = AuthCert }, false},
		{"cert", func(c *Config) { c.Auth, c.ClientCert, c.ClientKey = AuthCert, "/c", "/k" }, true},
		{"client cert without key", func(c *Config) { c.ClientCert = "/c" }, false},
		{"unknown auth", func(c *Config) { c.Auth = "ldap" }, false},
		{"zero timeout", func(c *Config) { c.Timeout = 0 }, false},
		{"zero refresh", func(c *Config) { c.RefreshInterval = 0 }, false},
		{"cache without ttl", func(c *Config) { c.DecryptCacheSize, c.DecryptCacheTTL = 10, 0 }, false},
		{"key_id too long", func(c *Config) { c.Namespace = strings.Repeat("n", 1000) }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.modify(&c)
			err := c.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, providers.ErrNotConfigured) {
				t.Errorf("Validate() = %v, want it to wrap %v", err, providers.ErrNotConfigured)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	resp := func(code int, msg string) error {
		return &api.ResponseError{StatusCode: code, Errors: []string{msg}, URL: "http://vault/v1/x"}
	}
	tests := []struct {
		name string
		op   op
		err  error
		want error
	}{
		{"bad tag", opDecrypt, resp(400, "cipher: message authentication failed"), providers.ErrInvalidCiphertext},
		{"no prefix", opDecrypt, resp(400, "invalid ciphertext: no prefix"), providers.ErrInvalidCiphertext},
		{"version too new", opDecrypt, resp(400, "invalid ciphertext: version is too new"), providers.ErrInvalidCiphertext},
		{"too old", opDecrypt, resp(400, "ciphertext or signature version is disallowed by policy (too old)"), providers.ErrKeyRetired},
		{"decrypt key missing", opDecrypt, resp(400, "encryption key not found"), providers.ErrKeyNotFound},
		{"encrypt key missing", opEncrypt, resp(400, "encryption key not found"), providers.ErrKeyNotFound},
		{"encrypt below min", opEncrypt, resp(400, "requested version for encryption is less than the minimum encryption key version"), providers.ErrKeyRetired},
		{"denied", opEncrypt, resp(403, "permission denied"), providers.ErrPermissionDenied},
		{"read key missing", opReadKey, errKeyMissing, providers.ErrKeyNotFound},
		{"sealed", opDecrypt, resp(503, "Vault is sealed"), providers.ErrUnavailable},
		{"internal", opDecrypt, resp(500, "internal error"), providers.ErrUnavailable},
		{"rate limited", opEncrypt, resp(429, "rate limit quota exceeded"), providers.ErrUnavailable},
		{"replication lag", opReadKey, resp(412, "required index state not present"), providers.ErrUnavailable},
		{"bad login", opLogin, resp(400, "invalid role or secret ID"), providers.ErrPermissionDenied},
		{"no auth mount", opLogin, resp(404, "no handler for route"), providers.ErrNotConfigured},
		{"bad request", opConfigure, resp(400, "min decryption version should not be less then min available version"), providers.ErrInvalidArgument},
		{"deadline", opDecrypt, fmt.Errorf("Put: %w", context.DeadlineExceeded), providers.ErrUnavailable},
		{"refused", opDecrypt, errors.New("dial tcp 127.0.0.1:8200: connect: connection refused"), providers.ErrUnavailable},
		{"already classified", opDecrypt, fmt.Errorf("x: %w", providers.ErrKeyRetired), providers.ErrKeyRetired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := classify(tc.op, tc.err)
			if !errors.Is(got, tc.want) {
				t.Errorf("classify(%s, %v) = %v, want %v", tc.op, tc.err, got, tc.want)
			}
			if strings.Contains(got.Error(), "\n") {
				t.Errorf("classify(%s, %v) = %q, want one line", tc.op, tc.err, got)
			}
		})
	}
	if classify(opDecrypt, nil) != nil {
		t.Errorf("classify(nil) != nil")
	}
	// One attempt timing out is the backend's trouble (Unavailable), not
	// the caller's deadline (which the kms package maps apart).
	if err := classify(opDecrypt, context.DeadlineExceeded); errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("classify(DeadlineExceeded) = %v keeps the context error in its chain", err)
	}
}

func TestKeyIDAndRef(t *testing.T) {
	created := time.Unix(1700000000, 0)
	tests := []struct {
		ns, mount, key string
		version        int64
		want           string
	}{
		{"", "transit", "kms", 3, "vault:transit/kms:v3:1700000000"},
		{"", "/transit/", "kms", 1, "vault:transit/kms:v1:1700000000"},
		{"team-a/", "kv/transit", "k8s", 12, "vault:team-a/kv/transit/k8s:v12:1700000000"},
	}
	for _, tc := range tests {
		if got := keyID(keyIDPrefix(tc.ns, tc.mount, tc.key), tc.version, created); got != tc.want {
			t.Errorf("keyID(%q, %q, %q, %d) = %q, want %q", tc.ns, tc.mount, tc.key, tc.version, got, tc.want)
		}
	}
	// Same name and version, recreated a second later: a different id.
	p := keyIDPrefix("", "transit", "kms")
	if keyID(p, 1, created) == keyID(p, 1, created.Add(time.Second)) {
		t.Errorf("a recreated key reuses its key_id")
	}

	for _, v := range []int64{1, 9, 10, 1 << 40, 1<<63 - 1} {
		got, err := parseRef(encodeRef(v))
		if err != nil || got != v {
			t.Errorf("parseRef(encodeRef(%d)) = %d, %v", v, got, err)
		}
	}
	for _, ref := range []string{"", "0", "01", "-1", "+1", "1a", "v1", "99999999999999999999"} {
		if _, err := parseRef([]byte(ref)); !errors.Is(err, providers.ErrInvalidCiphertext) {
			t.Errorf("parseRef(%q) = %v, want %v", ref, err, providers.ErrInvalidCiphertext)
		}
	}
}

func TestAssociatedDataIsUnambiguous(t *testing.T) {
	a := associatedData([]byte("ab"), "c")
	b := associatedData([]byte("a"), "bc")
	if string(a) == string(b) {
		t.Errorf("associatedData does not separate aad from key_id: %q", a)
	}
}

func TestCompactCiphertext(t *testing.T) {
	raw, err := compactCiphertext("vault:v12:AAEC", 12)
	if err != nil || string(raw) != "\x00\x01\x02" {
		t.Fatalf("compactCiphertext() = %x, %v", raw, err)
	}
	if s := transitCiphertext(raw, 12); s != "vault:v12:AAEC" {
		t.Errorf("transitCiphertext() = %q", s)
	}
	for _, s := range []string{"vault:v1:AAEC", "vault:v12:", "vault:v12:!!", "v12:AAEC"} {
		if _, err := compactCiphertext(s, 12); err == nil {
			t.Errorf("compactCiphertext(%q, 12) = nil error", s)
		}
	}
}

func TestTokenFileIsReReadWhenItChanges(t *testing.T) {
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("s.first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Auth, cfg.TokenFile = AuthToken, file
	fb := &fakeBackend{}
	p := newTestProvider(t, cfg, fb)
	if tok := fb.currentToken(); tok != "s.first" {
		t.Fatalf("token in use = %q, want the file's", tok)
	}
	if err := p.sess.maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fb.calls("lookup") != 1 {
		t.Errorf("unchanged token file was reloaded")
	}
	if err := os.WriteFile(file, []byte("s.second"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.sess.maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if tok := fb.currentToken(); tok != "s.second" {
		t.Errorf("token in use after rewrite = %q, want the new one", tok)
	}
}

func TestSessionRenewsThenRelogsNearMaxTTL(t *testing.T) {
	now := time.Unix(5000, 0)
	fb := &fakeBackend{mem: newMemTransit()}
	fb.login = func(context.Context, string, map[string]any) (tokenInfo, error) {
		return tokenInfo{Token: fmt.Sprintf("t%d", fb.calls("login")), TTL: time.Minute, Renewable: true}, nil
	}
	renewTTL := time.Minute
	fb.renew = func(context.Context) (tokenInfo, error) { return tokenInfo{TTL: renewTTL, Renewable: true}, nil }
	method, _ := newAuthMethod(&Config{Auth: AuthCert})
	m, _ := newMetrics(nil, nil, nil)
	s := &session{be: fb, method: method, timeout: time.Second, log: discardLogger(), metrics: m, now: func() time.Time { return now }}
	if err := s.login(context.Background()); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name           string
		advance        time.Duration
		renewTTL       time.Duration
		renews, logins int
	}{
		{"before two thirds: nothing", 30 * time.Second, time.Minute, 0, 1},
		{"at two thirds: renew", 11 * time.Second, time.Minute, 1, 1},
		{"renewal capped by max_ttl: log in", 41 * time.Second, 10 * time.Second, 2, 2},
	}
	for _, st := range steps {
		now = now.Add(st.advance)
		renewTTL = st.renewTTL
		if err := s.maintain(context.Background()); err != nil {
			t.Fatalf("%s: maintain() = %v", st.name, err)
		}
		if fb.calls("renew") != st.renews || fb.calls("login") != st.logins {
			t.Errorf("%s: renewals %d logins %d, want %d and %d", st.name, fb.calls("renew"), fb.calls("login"), st.renews, st.logins)
		}
	}

	// Renewal refused (token revoked): log in again.
	now = now.Add(time.Minute)
	fb.renew = func(context.Context) (tokenInfo, error) {
		return tokenInfo{}, &api.ResponseError{StatusCode: 403, Errors: []string{"permission denied"}}
	}
	if err := s.maintain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fb.calls("login") != 3 || fb.currentToken() != "t3" {
		t.Errorf("after a refused renewal: logins %d token %q, want 3 and t3", fb.calls("login"), fb.currentToken())
	}
}

func TestPolicy(t *testing.T) {
	plugin, err := Policy(RolePlugin, "transit", "kms")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`path "transit/encrypt/kms"`, `path "transit/decrypt/kms"`, `path "transit/keys/kms"`} {
		if !strings.Contains(plugin, want) {
			t.Errorf("plugin policy lacks %s:\n%s", want, plugin)
		}
	}
	var paths []string
	for _, line := range strings.Split(plugin, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "path "):
			paths = append(paths, line)
		case strings.HasPrefix(line, "capabilities"):
			if line != `capabilities = ["update"]` && line != `capabilities = ["read"]` {
				t.Errorf("plugin policy grants more than update or read: %s", line)
			}
		}
	}
	if len(paths) != 3 {
		t.Errorf("plugin policy has %d paths, want 3: %q", len(paths), paths)
	}
	operator, err := Policy(RoleOperator, "transit", "kms")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`path "transit/keys/kms/rotate"`, `path "transit/keys/kms/config"`} {
		if !strings.Contains(operator, want) {
			t.Errorf("operator policy lacks %s", want)
		}
	}
	if _, err := Policy("admin", "transit", "kms"); !errors.Is(err, providers.ErrInvalidArgument) {
		t.Errorf("Policy(admin) = %v, want %v", err, providers.ErrInvalidArgument)
	}
}

var updatePolicies = flag.Bool("update-policies", false, "rewrite deploy/vault/*.hcl from Policy")

// TestDeployedPoliciesMatch keeps deploy/vault/*.hcl equal to what
// kmsctl vault policy prints for the documented mount and key.
func TestDeployedPoliciesMatch(t *testing.T) {
	for _, role := range []string{RolePlugin, RoleOperator} {
		want, err := Policy(role, "transit", "kms-plugin")
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join("..", "..", "deploy", "vault", "kms-plugin-"+role+".hcl")
		if *updatePolicies {
			if err := os.WriteFile(file, []byte(want+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		if string(got) != want+"\n" {
			t.Errorf("%s differs from Policy(%q, transit, kms-plugin); regenerate it: go test ./providers/vault -run TestDeployedPoliciesMatch -update-policies", file, role)
		}
	}
}

func TestIsPlainHTTP(t *testing.T) {
	for addr, want := range map[string]bool{
		"http://vault.example:8200":  true,
		"HTTP://10.0.0.5:8200":       true,
		"https://vault.example:8200": false,
		"http://127.0.0.1:8200":      false,
		"http://[::1]:8200":          false,
		"http://localhost:8200":      false,
		"unix:///var/run/vault.sock": false,
		"":                           false,
	} {
		if got := isPlainHTTP(addr); got != want {
			t.Errorf("isPlainHTTP(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestAssociatedDataGolden pins the byte layout of what transit binds to
// every stored ciphertext. Changing it would pass every round-trip test
// and still make every Secret already in etcd undecryptable: a new layout
// needs a new envelope format, never an edit here.
func TestAssociatedDataGolden(t *testing.T) {
	got := hex.EncodeToString(associatedData([]byte{0x01, 0x01, 0x02}, "vault:transit/kms:v2:1700000000"))
	const want = "00000003010102" + "7661756c743a7472616e7369742f6b6d733a76323a31373030303030303030"
	if got != want {
		t.Errorf("associatedData layout changed:\n got %s\nwant %s", got, want)
	}
}
