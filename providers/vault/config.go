package vault

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/kms/contract"
	"github.com/kms-plugin/kms-plugin/providers"
)

// Auth methods accepted by --vault-auth.
const (
	AuthToken      = "token"
	AuthAppRole    = "approle"
	AuthKubernetes = "kubernetes"
	AuthJWT        = "jwt"
	AuthCert       = "cert"
)

// DefaultKubernetesJWTFile is where a pod's service account token is
// mounted; Kubernetes auth reads it when --vault-jwt-file is not given.
const DefaultKubernetesJWTFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// maxKeyIDLen is the apiserver's limit on key_id.
const maxKeyIDLen = contract.MaxKeyIDLen

// keyNameRe is the name pattern transit accepts for keys
// (framework.GenericNameRegex); anything else could never address a key.
var keyNameRe = regexp.MustCompile(`^\w(([\w.-]+)?\w)?$`)

// Config is everything the Vault provider needs to reach one transit key.
// The zero value is not usable; start from DefaultConfig so that the VAULT_*
// environment variables act as defaults, as they do for the vault CLI.
type Config struct {
	// Addr is Vault's URL (VAULT_ADDR), or the URLs of the nodes of a Vault
	// cluster separated by commas. The provider fails over among them and
	// follows the active node.
	Addr string
	// Mount is the transit secrets engine's mount path.
	Mount string
	// Key is the transit key's name.
	Key string
	// Namespace is the Vault Enterprise namespace (VAULT_NAMESPACE).
	Namespace string

	// Auth is one of AuthToken, AuthAppRole, AuthKubernetes, AuthJWT, AuthCert.
	Auth string
	// Token is a static token (VAULT_TOKEN). It is never a flag, so that it
	// never shows up in a process listing; prefer TokenFile.
	Token string
	// TokenFile holds a token; it is re-read when its content changes.
	TokenFile string
	// RoleIDFile and SecretIDFile hold AppRole credentials.
	RoleIDFile   string
	SecretIDFile string
	// AuthMount is the auth method's mount path; it defaults to the
	// method's name.
	AuthMount string
	// Role is the Kubernetes or JWT auth role, or the cert auth role
	// (optional there).
	Role string
	// JWTFile holds the JWT for Kubernetes or JWT auth; it is read at
	// every login, so projected tokens that the kubelet refreshes work.
	JWTFile string

	// TLS: CA bundle (VAULT_CACERT), client certificate and key
	// (VAULT_CLIENT_CERT, VAULT_CLIENT_KEY, also used for cert auth), SNI
	// name (VAULT_TLS_SERVER_NAME), and verification off (VAULT_SKIP_VERIFY,
	// never in production).
	CACert        string
	ClientCert    string
	ClientKey     string
	TLSServerName string
	TLSSkipVerify bool

	// Timeout bounds each HTTP attempt; retries stay inside the caller's
	// deadline.
	Timeout time.Duration
	// RefreshInterval is how often key metadata is re-read, so that a
	// rotation done elsewhere shows up as a new key_id, and how often the
	// token file is checked for a new token.
	RefreshInterval time.Duration
	// DecryptCacheSize bounds the in-memory cache of decrypted DEK seeds in
	// entries; 0 (the default) turns it off.
	DecryptCacheSize int
	// DecryptCacheTTL bounds how long a cached plaintext is served.
	DecryptCacheTTL time.Duration
	// BatchDecrypt sends Decrypts that queue behind others to transit's
	// batch_input, several per request. On by default: under load it
	// raises Decrypt throughput and lowers CPU on both sides (see
	// docs/performance.md); a lone call never waits.
	BatchDecrypt bool
}

// DefaultConfig returns the defaults, taking VAULT_ADDR, VAULT_NAMESPACE,
// VAULT_TOKEN, VAULT_CACERT, VAULT_CLIENT_CERT, VAULT_CLIENT_KEY,
// VAULT_TLS_SERVER_NAME and VAULT_SKIP_VERIFY from the environment.
func DefaultConfig() Config {
	c := Config{
		Addr:            os.Getenv(api.EnvVaultAddress),
		Mount:           "transit",
		Namespace:       os.Getenv(api.EnvVaultNamespace),
		Auth:            AuthToken,
		Token:           os.Getenv(api.EnvVaultToken),
		CACert:          os.Getenv(api.EnvVaultCACert),
		ClientCert:      os.Getenv(api.EnvVaultClientCert),
		ClientKey:       os.Getenv(api.EnvVaultClientKey),
		TLSServerName:   os.Getenv(api.EnvVaultTLSServerName),
		Timeout:         2 * time.Second,
		RefreshInterval: 30 * time.Second,
		DecryptCacheTTL: 5 * time.Minute,
		BatchDecrypt:    true,
	}
	if v, err := strconv.ParseBool(os.Getenv(api.EnvVaultSkipVerify)); err == nil {
		c.TLSSkipVerify = v
	}
	return c
}

// RegisterFlags binds the --vault-* flags to c; the values already in c
// are the defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Var(&addrList{addr: &c.Addr}, "vault-addr", "Vault address, e.g. https://vault.example:8200 (env VAULT_ADDR); for a Vault cluster, repeat it or comma-separate one address per node")
	fs.StringVar(&c.Mount, "vault-mount", c.Mount, "mount path of the transit secrets engine")
	fs.StringVar(&c.Key, "vault-key", c.Key, "name of the transit key that wraps DEKs")
	fs.StringVar(&c.Namespace, "vault-namespace", c.Namespace, "Vault Enterprise namespace (env VAULT_NAMESPACE)")
	fs.StringVar(&c.Auth, "vault-auth", c.Auth, "auth method: token, approle, kubernetes, jwt or cert")
	fs.StringVar(&c.TokenFile, "vault-token-file", c.TokenFile, "file holding a Vault token, re-read when it changes (token auth; else env VAULT_TOKEN)")
	fs.StringVar(&c.RoleIDFile, "vault-role-id-file", c.RoleIDFile, "file holding the AppRole role_id")
	fs.StringVar(&c.SecretIDFile, "vault-secret-id-file", c.SecretIDFile, "file holding the AppRole secret_id")
	fs.StringVar(&c.AuthMount, "vault-auth-mount", c.AuthMount, "mount path of the auth method (default: the method's name)")
	fs.StringVar(&c.Role, "vault-role", c.Role, "role for kubernetes or jwt auth (optional certificate role name for cert auth)")
	fs.StringVar(&c.JWTFile, "vault-jwt-file", c.JWTFile, "file holding the JWT for jwt or kubernetes auth, read at every login (kubernetes default: "+DefaultKubernetesJWTFile+")")
	fs.StringVar(&c.CACert, "vault-cacert", c.CACert, "PEM CA bundle that verifies Vault's certificate (env VAULT_CACERT)")
	fs.StringVar(&c.ClientCert, "vault-client-cert", c.ClientCert, "PEM client certificate for TLS and cert auth (env VAULT_CLIENT_CERT)")
	fs.StringVar(&c.ClientKey, "vault-client-key", c.ClientKey, "PEM key of --vault-client-cert (env VAULT_CLIENT_KEY)")
	fs.StringVar(&c.TLSServerName, "vault-tls-server-name", c.TLSServerName, "server name for SNI and certificate checks (env VAULT_TLS_SERVER_NAME)")
	fs.BoolVar(&c.TLSSkipVerify, "vault-tls-skip-verify", c.TLSSkipVerify, "DANGEROUS: do not verify Vault's certificate (env VAULT_SKIP_VERIFY)")
	fs.DurationVar(&c.Timeout, "vault-timeout", c.Timeout, "timeout of one Vault HTTP attempt")
	fs.DurationVar(&c.RefreshInterval, "vault-refresh-interval", c.RefreshInterval, "how often key metadata (rotations) and the token file are re-read")
	fs.IntVar(&c.DecryptCacheSize, "vault-decrypt-cache-size", c.DecryptCacheSize, "entries in the in-memory cache of decrypted DEK seeds; 0 turns it off (see docs/vault.md)")
	fs.DurationVar(&c.DecryptCacheTTL, "vault-decrypt-cache-ttl", c.DecryptCacheTTL, "how long a cached decrypted DEK seed is served")
	fs.BoolVar(&c.BatchDecrypt, "vault-batch-decrypt", c.BatchDecrypt, "send Decrypts that queue behind others to transit's batch_input, several per request (see docs/vault.md)")
}

// Validate reports every problem with c at once, wrapped in
// providers.ErrNotConfigured. It reads no files.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	addrs := c.addrs()
	if len(addrs) == 0 {
		bad("--vault-addr (or VAULT_ADDR) is required")
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if u, err := url.Parse(a); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			bad("--vault-addr %q is not an http(s) URL of a Vault node (scheme, host and port only)", a)
		} else if seen[u.Scheme+"://"+u.Host] {
			bad("--vault-addr %q is given twice", a)
		} else {
			seen[u.Scheme+"://"+u.Host] = true
		}
	}
	if strings.Trim(c.Mount, "/") == "" {
		bad("--vault-mount is required")
	}
	if !keyNameRe.MatchString(c.Key) {
		bad("--vault-key %q is not a transit key name", c.Key)
	}
	switch c.Auth {
	case AuthToken:
		if c.Token == "" && c.TokenFile == "" {
			bad("token auth needs --vault-token-file or VAULT_TOKEN")
		}
	case AuthAppRole:
		if c.RoleIDFile == "" {
			bad("approle auth needs --vault-role-id-file")
		}
	case AuthKubernetes:
		if c.Role == "" {
			bad("kubernetes auth needs --vault-role")
		}
	case AuthJWT:
		if c.Role == "" || c.JWTFile == "" {
			bad("jwt auth needs --vault-role and --vault-jwt-file")
		}
	case AuthCert:
		if c.ClientCert == "" || c.ClientKey == "" {
			bad("cert auth needs --vault-client-cert and --vault-client-key")
		}
	default:
		bad("--vault-auth %q is not one of token, approle, kubernetes, jwt, cert", c.Auth)
	}
	if (c.ClientCert == "") != (c.ClientKey == "") {
		bad("--vault-client-cert and --vault-client-key go together")
	}
	if c.Timeout <= 0 {
		bad("--vault-timeout must be positive")
	}
	if c.RefreshInterval <= 0 {
		bad("--vault-refresh-interval must be positive")
	}
	if c.DecryptCacheSize < 0 {
		bad("--vault-decrypt-cache-size must not be negative")
	}
	if c.DecryptCacheSize > 0 && c.DecryptCacheTTL <= 0 {
		bad("--vault-decrypt-cache-ttl must be positive when the cache is on")
	}
	// The longest key_id this configuration can produce: versions and
	// creation times are at most 19 digits each.
	if n := len(keyIDPrefix(c.Namespace, c.Mount, c.Key)) + len(":v:") + 2*19; n > maxKeyIDLen {
		bad("namespace, mount and key are too long for a %d-byte key_id", maxKeyIDLen)
	}
	if len(errs) > 0 {
		return fmt.Errorf("vault config: %w: %w", providers.ErrNotConfigured, errors.Join(errs...))
	}
	return nil
}

// addrs returns the Vault addresses in Addr, in order, without trailing
// slashes.
func (c *Config) addrs() []string {
	var out []string
	for _, a := range strings.Split(c.Addr, ",") {
		if a = strings.TrimSuffix(strings.TrimSpace(a), "/"); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// addrList is the --vault-addr flag: each use adds addresses (one, or a
// comma-separated list) to the earlier uses'; the first use replaces the
// default that came from VAULT_ADDR.
type addrList struct {
	addr *string
	set  bool
}

func (a *addrList) String() string {
	if a == nil || a.addr == nil {
		return ""
	}
	return *a.addr
}

func (a *addrList) Set(v string) error {
	if !a.set {
		*a.addr, a.set = "", true
	}
	if *a.addr != "" {
		v = *a.addr + "," + v
	}
	*a.addr = v
	return nil
}

// authMount is the auth method's mount path without slashes.
func (c *Config) authMount() string {
	if m := strings.Trim(c.AuthMount, "/"); m != "" {
		return m
	}
	return c.Auth
}

// hotIdleConnsPerNode is how many idle connections the hot path keeps to
// each node: enough for the bursts of Decrypts of an apiserver's cold
// start, so that a burst does not pay a connection (and a TLS handshake)
// per call.
const hotIdleConnsPerNode = 128

// newAPIBackend builds one SDK client per node and the hot path's client,
// which shares their TLS settings.
func newAPIBackend(c Config) (*apiBackend, error) {
	addrs := c.addrs()
	b := &apiBackend{eps: newEndpoints(addrs), mount: strings.Trim(c.Mount, "/"), key: c.Key}
	var tr *http.Transport
	for _, addr := range addrs {
		client, t, err := c.newAPIClient(addr)
		if err != nil {
			return nil, err
		}
		b.clients = append(b.clients, client)
		tr = t
	}
	hot := tr.Clone()
	hot.MaxIdleConnsPerHost = hotIdleConnsPerNode
	hot.MaxIdleConns = hotIdleConnsPerNode * len(addrs)
	// Each attempt is bounded by the provider (call), across failovers.
	b.hot = newTransitHTTP(hot, b.eps, b.mount, c.Key, c.Namespace, c.Timeout)
	if c.BatchDecrypt {
		b.batch = newDecryptBatcher(b.hot)
	}
	return b, nil
}

// newAPIClient builds the Vault SDK client for the node at addr from c
// alone: the environment was already folded into c by DefaultConfig, and
// the SDK's own retries are off because the provider retries inside the
// caller's deadline. It also returns the client's transport.
func (c *Config) newAPIClient(addr string) (*api.Client, *http.Transport, error) {
	ac := api.DefaultConfig()
	if ac.Error != nil {
		return nil, nil, fmt.Errorf("vault client config: %w: %w", providers.ErrNotConfigured, ac.Error)
	}
	ac.Address = addr
	ac.AgentAddress = ""
	ac.MaxRetries = 0
	ac.Timeout = c.Timeout
	// Start from a clean TLS config so that VAULT_* variables that c
	// overrides leave nothing behind.
	tr, ok := ac.HttpClient.Transport.(*http.Transport)
	if !ok {
		return nil, nil, fmt.Errorf("vault client config: %w: unexpected transport %T", providers.ErrNotConfigured, ac.HttpClient.Transport)
	}
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if err := ac.ConfigureTLS(&api.TLSConfig{
		CACert:        c.CACert,
		ClientCert:    c.ClientCert,
		ClientKey:     c.ClientKey,
		TLSServerName: c.TLSServerName,
		Insecure:      c.TLSSkipVerify,
	}); err != nil {
		return nil, nil, fmt.Errorf("vault TLS config: %w: %w", providers.ErrNotConfigured, err)
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, nil, fmt.Errorf("vault client: %w: %w", providers.ErrNotConfigured, err)
	}
	// NewClient picks up VAULT_TOKEN and VAULT_NAMESPACE by itself; the
	// session decides which token to use.
	client.ClearToken()
	client.ClearNamespace()
	if c.Namespace != "" {
		client.SetNamespace(c.Namespace)
	}
	return client, tr, nil
}
