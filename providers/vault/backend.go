package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
)

// backend is the slice of Vault's HTTP API that the provider uses. The
// real one wraps *api.Client; unit tests swap in a fake. Errors come back
// unclassified (as the SDK returns them); the provider classifies them
// once, in classify.
type backend interface {
	// Encrypt seals plaintext with key version, binding ad, and returns
	// transit's "vault:vN:<base64>" string.
	Encrypt(ctx context.Context, version int64, plaintext, ad []byte) (string, error)
	// Decrypt opens a "vault:vN:<base64>" string with ad.
	Decrypt(ctx context.Context, ciphertext string, ad []byte) ([]byte, error)
	// ReadKey returns the key's metadata, or errKeyMissing.
	ReadKey(ctx context.Context) (keyMetadata, error)
	// Rotate adds a new key version.
	Rotate(ctx context.Context) error
	// SetMinDecryptionVersion sets the key's min_decryption_version.
	SetMinDecryptionVersion(ctx context.Context, version int64) error

	// Login posts body to auth/<mount>/login without any token and
	// returns the token it issues.
	Login(ctx context.Context, mount string, body map[string]any) (tokenInfo, error)
	// LookupSelf describes the token in use.
	LookupSelf(ctx context.Context) (tokenInfo, error)
	// RenewSelf renews the token in use.
	RenewSelf(ctx context.Context) (tokenInfo, error)
	// SetToken makes token the one used by every later call.
	SetToken(token string)
	// FollowLeader asks the cluster which node is active and, when it is
	// one of the configured ones, sends later calls straight to it. It
	// reports whether it found the leader.
	FollowLeader(ctx context.Context) (bool, error)
	// NodeMoved receives when a call moved on from a node that did not
	// serve; nil when there is only one node.
	NodeMoved() <-chan struct{}
	// CapabilitiesSelf lists what the token in use may do on path.
	CapabilitiesSelf(ctx context.Context, path string) ([]string, error)
}

// errKeyMissing is what backend.ReadKey returns when the key does not
// exist (Vault answers 404 with no body, which the SDK reports as a nil
// secret and no error).
var errKeyMissing = errors.New("transit key does not exist")

// tokenInfo is what the provider needs to know about a token. Token is a
// secret: it never goes into an error or a log.
type tokenInfo struct {
	Token     string
	TTL       time.Duration // 0 when the token never expires
	Renewable bool
}

// keyMetadata is the part of transit/keys/<k> the provider uses.
type keyMetadata struct {
	Type                 string
	Derived              bool
	SupportsEncryption   bool
	DeletionAllowed      bool
	Latest               int64
	MinDecryptionVersion int64
	MinEncryptionVersion int64
	MinAvailableVersion  int64
	// Created holds the creation time of each version that can decrypt
	// (transit archives versions below min_decryption_version and does not
	// list them), which makes the key_id unique to that version's life.
	Created map[int64]time.Time
}

// versions returns the live versions in ascending order.
func (m keyMetadata) versions() []int64 {
	vs := make([]int64, 0, len(m.Created))
	for v := range m.Created {
		vs = append(vs, v)
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i] < vs[j] })
	return vs
}

// aeadKeyTypes are the transit key types that take associated_data.
var aeadKeyTypes = map[string]bool{
	"aes128-gcm96":      true,
	"aes256-gcm96":      true,
	"chacha20-poly1305": true,
}

// usable reports why the key cannot wrap DEKs for kms-plugin, or nil.
func (m keyMetadata) usable() error {
	switch {
	case !aeadKeyTypes[m.Type]:
		return fmt.Errorf("key type %q does not support associated data; use aes256-gcm96", m.Type)
	case m.Derived:
		return errors.New("derived (context) keys are not supported")
	case m.Latest < 1 || m.Created[m.Latest].IsZero():
		return fmt.Errorf("latest version %d has no creation time", m.Latest)
	}
	return nil
}

// apiBackend is the backend over Vault's HTTP API: transit encrypt and
// decrypt on the lean hot path (transitHTTP), everything else through the
// Vault SDK, with one SDK client per configured node.
type apiBackend struct {
	clients []*api.Client // one per node, in the order of eps
	eps     *endpoints
	hot     *transitHTTP
	batch   *decryptBatcher // nil when batching is off
	mount   string          // transit mount, no slashes
	key     string
}

var _ backend = (*apiBackend)(nil)

func (b *apiBackend) path(parts ...string) string {
	return b.mount + "/" + strings.Join(parts, "/")
}

// sdk runs fn with the current node's SDK client, failing over like the
// hot path.
func (b *apiBackend) sdk(ctx context.Context, fn func(c *api.Client) error) error {
	return b.eps.do(ctx, func(i int) error { return fn(b.clients[i]) })
}

func (b *apiBackend) Encrypt(ctx context.Context, version int64, plaintext, ad []byte) (string, error) {
	return b.hot.encrypt(ctx, version, plaintext, ad)
}

func (b *apiBackend) Decrypt(ctx context.Context, ciphertext string, ad []byte) ([]byte, error) {
	if b.batch != nil {
		return b.batch.decrypt(ctx, ciphertext, ad)
	}
	return b.hot.decrypt(ctx, ciphertext, ad)
}

func (b *apiBackend) ReadKey(ctx context.Context) (keyMetadata, error) {
	var s *api.Secret
	err := b.sdk(ctx, func(c *api.Client) error {
		var err error
		s, err = c.Logical().ReadWithContext(ctx, b.path("keys", url.PathEscape(b.key)))
		return err
	})
	if err != nil {
		return keyMetadata{}, err
	}
	if s == nil || s.Data == nil {
		return keyMetadata{}, errKeyMissing
	}
	return parseKeyMetadata(s.Data)
}

// parseKeyMetadata reads transit's key description, whose numbers arrive
// as json.Number.
func parseKeyMetadata(d map[string]any) (keyMetadata, error) {
	m := keyMetadata{Created: map[int64]time.Time{}}
	m.Type, _ = d["type"].(string)
	m.Derived, _ = d["derived"].(bool)
	m.SupportsEncryption, _ = d["supports_encryption"].(bool)
	m.DeletionAllowed, _ = d["deletion_allowed"].(bool)
	var err error
	if m.Latest, err = toInt64(d["latest_version"]); err != nil {
		return keyMetadata{}, fmt.Errorf("parse latest_version: %w", err)
	}
	if m.MinDecryptionVersion, err = toInt64(d["min_decryption_version"]); err != nil {
		return keyMetadata{}, fmt.Errorf("parse min_decryption_version: %w", err)
	}
	if m.MinEncryptionVersion, err = toInt64(d["min_encryption_version"]); err != nil {
		return keyMetadata{}, fmt.Errorf("parse min_encryption_version: %w", err)
	}
	m.MinAvailableVersion, _ = toInt64(d["min_available_version"]) // absent before Vault 1.x trimming
	keys, _ := d["keys"].(map[string]any)
	for k, v := range keys {
		ver, err := strconv.ParseInt(k, 10, 64)
		if err != nil || ver < 1 {
			return keyMetadata{}, fmt.Errorf("parse key version %q", k)
		}
		sec, err := toInt64(v)
		if err != nil {
			return keyMetadata{}, fmt.Errorf("parse creation time of version %d: %w", ver, err)
		}
		m.Created[ver] = time.Unix(sec, 0).UTC()
	}
	return m, nil
}

func toInt64(v any) (int64, error) {
	switch n := v.(type) {
	case json.Number:
		return n.Int64()
	case float64:
		return int64(n), nil
	case int64:
		return n, nil
	case int:
		return int64(n), nil
	case nil:
		return 0, errors.New("missing")
	default:
		return 0, fmt.Errorf("unexpected type %T", v)
	}
}

func (b *apiBackend) Rotate(ctx context.Context) error {
	return b.sdk(ctx, func(c *api.Client) error {
		_, err := c.Logical().WriteWithContext(ctx, b.path("keys", url.PathEscape(b.key), "rotate"), nil)
		return err
	})
}

func (b *apiBackend) SetMinDecryptionVersion(ctx context.Context, version int64) error {
	return b.sdk(ctx, func(c *api.Client) error {
		_, err := c.Logical().WriteWithContext(ctx, b.path("keys", url.PathEscape(b.key), "config"), map[string]any{
			"min_decryption_version": version,
		})
		return err
	})
}

func (b *apiBackend) Login(ctx context.Context, mount string, body map[string]any) (tokenInfo, error) {
	var s *api.Secret
	err := b.sdk(ctx, func(client *api.Client) error {
		// Log in on a clone without a token: a revoked token in the
		// header must not get in the way of getting a new one.
		c, err := client.CloneWithHeaders()
		if err != nil {
			return err
		}
		c.ClearToken()
		s, err = c.Logical().WriteWithContext(ctx, "auth/"+mount+"/login", body)
		return err
	})
	if err != nil {
		return tokenInfo{}, err
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return tokenInfo{}, errors.New("vault login response has no token")
	}
	return tokenInfo{
		Token:     s.Auth.ClientToken,
		TTL:       time.Duration(s.Auth.LeaseDuration) * time.Second,
		Renewable: s.Auth.Renewable,
	}, nil
}

func (b *apiBackend) LookupSelf(ctx context.Context) (tokenInfo, error) {
	var s *api.Secret
	err := b.sdk(ctx, func(c *api.Client) error {
		var err error
		s, err = c.Auth().Token().LookupSelfWithContext(ctx)
		return err
	})
	if err != nil {
		return tokenInfo{}, err
	}
	if s == nil || s.Data == nil {
		return tokenInfo{}, errors.New("vault token lookup response is empty")
	}
	ttl, _ := toInt64(s.Data["ttl"])
	renewable, _ := s.Data["renewable"].(bool)
	return tokenInfo{TTL: time.Duration(ttl) * time.Second, Renewable: renewable}, nil
}

func (b *apiBackend) RenewSelf(ctx context.Context) (tokenInfo, error) {
	var s *api.Secret
	err := b.sdk(ctx, func(c *api.Client) error {
		var err error
		s, err = c.Auth().Token().RenewSelfWithContext(ctx, 0)
		return err
	})
	if err != nil {
		return tokenInfo{}, err
	}
	if s == nil || s.Auth == nil {
		return tokenInfo{}, errors.New("vault token renewal response is empty")
	}
	return tokenInfo{
		TTL:       time.Duration(s.Auth.LeaseDuration) * time.Second,
		Renewable: s.Auth.Renewable,
	}, nil
}

func (b *apiBackend) SetToken(token string) {
	for _, c := range b.clients {
		c.SetToken(token)
	}
	b.hot.setToken(token)
}

func (b *apiBackend) CapabilitiesSelf(ctx context.Context, path string) ([]string, error) {
	var caps []string
	err := b.sdk(ctx, func(c *api.Client) error {
		var err error
		caps, err = c.Sys().CapabilitiesSelfWithContext(ctx, path)
		return err
	})
	return caps, err
}

func (b *apiBackend) NodeMoved() <-chan struct{} {
	if len(b.clients) < 2 {
		return nil
	}
	return b.eps.moved
}

// FollowLeader reads sys/leader (no token needed) from the current node.
func (b *apiBackend) FollowLeader(ctx context.Context) (bool, error) {
	if len(b.clients) < 2 {
		return true, nil
	}
	var l *api.LeaderResponse
	err := b.sdk(ctx, func(c *api.Client) error {
		var err error
		l, err = c.Sys().LeaderWithContext(ctx)
		return err
	})
	if err != nil {
		return false, err
	}
	if l.LeaderAddress == "" {
		return false, nil // an election is under way
	}
	u, err := url.Parse(l.LeaderAddress)
	if err != nil {
		return false, nil
	}
	return b.eps.prefer(u), nil
}
