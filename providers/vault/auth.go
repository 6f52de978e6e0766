package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/kms-plugin/kms-plugin/providers"
)

// authMethod produces tokens for one --vault-auth choice.
type authMethod interface {
	// name is the --vault-auth value, for logs and metrics.
	name() string
	// obtain returns a token: a fresh login for approle, kubernetes, jwt
	// and cert; the configured token for token auth (TTL unknown, 0).
	obtain(ctx context.Context, be backend) (tokenInfo, error)
	// mints reports whether obtain logs in, so that a failed renewal or a
	// revoked token can be fixed by calling it again.
	mints() bool
	// changed reports whether obtain would now return a different token
	// than last time without logging in (a rewritten token file).
	changed() bool
}

// newAuthMethod builds the method that c selects.
func newAuthMethod(c *Config) (authMethod, error) {
	switch c.Auth {
	case AuthToken:
		return &tokenAuth{static: c.Token, file: c.TokenFile}, nil
	case AuthAppRole:
		return &loginAuth{method: AuthAppRole, mount: c.authMount(), body: func() (map[string]any, error) {
			roleID, err := readSecretFile(c.RoleIDFile, "role_id")
			if err != nil {
				return nil, err
			}
			body := map[string]any{"role_id": roleID}
			if c.SecretIDFile != "" {
				secretID, err := readSecretFile(c.SecretIDFile, "secret_id")
				if err != nil {
					return nil, err
				}
				body["secret_id"] = secretID
			}
			return body, nil
		}}, nil
	case AuthKubernetes, AuthJWT:
		file := c.JWTFile
		if file == "" && c.Auth == AuthKubernetes {
			file = DefaultKubernetesJWTFile
		}
		return &loginAuth{method: c.Auth, mount: c.authMount(), body: func() (map[string]any, error) {
			jwt, err := readSecretFile(file, "JWT")
			if err != nil {
				return nil, err
			}
			return map[string]any{"role": c.Role, "jwt": jwt}, nil
		}}, nil
	case AuthCert:
		return &loginAuth{method: AuthCert, mount: c.authMount(), body: func() (map[string]any, error) {
			body := map[string]any{}
			if c.Role != "" {
				body["name"] = c.Role
			}
			return body, nil
		}}, nil
	}
	return nil, fmt.Errorf("vault auth %q: %w", c.Auth, providers.ErrNotConfigured)
}

// readSecretFile reads a credential file. Errors name the file, never its
// content.
func readSecretFile(path, what string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s file: %w: %w", what, providers.ErrNotConfigured, err)
	}
	s := string(bytes.TrimSpace(b))
	if s == "" {
		return "", fmt.Errorf("read %s file %s: %w: file is empty", what, path, providers.ErrNotConfigured)
	}
	return s, nil
}

// tokenAuth uses a token given to the plugin: from a file, re-read when its
// content changes, or from VAULT_TOKEN.
type tokenAuth struct {
	static string
	file   string

	mu   sync.Mutex
	last [sha256.Size]byte // hash of the last token read from file
}

func (a *tokenAuth) name() string { return AuthToken }
func (a *tokenAuth) mints() bool  { return false }

func (a *tokenAuth) obtain(context.Context, backend) (tokenInfo, error) {
	if a.file == "" {
		return tokenInfo{Token: a.static}, nil
	}
	t, err := readSecretFile(a.file, "token")
	if err != nil {
		return tokenInfo{}, err
	}
	a.mu.Lock()
	a.last = sha256.Sum256([]byte(t))
	a.mu.Unlock()
	return tokenInfo{Token: t}, nil
}

func (a *tokenAuth) changed() bool {
	if a.file == "" {
		return false
	}
	t, err := readSecretFile(a.file, "token")
	if err != nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return sha256.Sum256([]byte(t)) != a.last
}

// loginAuth logs in at auth/<mount>/login with a body built from files
// read at each login.
type loginAuth struct {
	method string
	mount  string
	body   func() (map[string]any, error)
}

func (a *loginAuth) name() string  { return a.method }
func (a *loginAuth) mints() bool   { return true }
func (a *loginAuth) changed() bool { return false }

func (a *loginAuth) obtain(ctx context.Context, be backend) (tokenInfo, error) {
	body, err := a.body()
	if err != nil {
		return tokenInfo{}, err
	}
	return be.Login(ctx, a.mount, body)
}

// minReloginInterval keeps a policy that really denies access from
// turning every request into a login.
const minReloginInterval = 2 * time.Second

// session keeps a valid token on the backend: it logs in, renews the token
// before it expires, logs in again when renewal fails or the token is
// revoked, and picks up a rewritten token file.
type session struct {
	be      backend
	method  authMethod
	timeout time.Duration
	log     *slog.Logger
	metrics *metrics
	now     func() time.Time

	sf singleflight.Group

	mu        sync.Mutex
	ttl       time.Duration // 0: never expires
	renewable bool
	measured  time.Time     // when ttl was current
	loginTTL  time.Duration // ttl right after the last login
	lastLogin time.Time
	hasToken  bool
}

// login gets a new token and puts it in use. Concurrent callers share one
// login.
func (s *session) login(ctx context.Context) error {
	_, err, _ := s.sf.Do("login", func() (any, error) {
		return nil, s.loginOnce(ctx)
	})
	return err
}

func (s *session) loginOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	start := s.now()
	info, err := s.method.obtain(ctx, s.be)
	if err == nil && !s.method.mints() {
		// A given token: learn its TTL (and that it works).
		s.be.SetToken(info.Token)
		var li tokenInfo
		li, err = s.be.LookupSelf(ctx)
		err = classify(opLookup, err)
		info.TTL, info.Renewable = li.TTL, li.Renewable
	} else {
		err = classify(opLogin, err)
	}
	s.metrics.observe(opLogin, err, s.now().Sub(start))
	s.metrics.login(s.method.name(), err)
	s.mu.Lock()
	s.lastLogin = s.now()
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("log in to vault with %s auth: %w", s.method.name(), err)
	}
	s.be.SetToken(info.Token)
	s.mu.Lock()
	s.ttl, s.renewable, s.measured, s.loginTTL, s.hasToken = info.TTL, info.Renewable, s.now(), info.TTL, true
	s.mu.Unlock()
	s.log.Info("vault login", "auth", s.method.name(), "ttl", info.TTL, "renewable", info.Renewable)
	return nil
}

// recover is called after Vault denied a request. It reports whether a
// different token is now in use, so that the request is worth retrying:
// the token file changed, or a login succeeded (at most once every
// minReloginInterval, since a real policy denial looks the same).
func (s *session) recover(ctx context.Context) bool {
	if !s.method.mints() {
		if !s.method.changed() {
			return false
		}
		return s.login(ctx) == nil
	}
	s.mu.Lock()
	recent := s.now().Sub(s.lastLogin) < minReloginInterval
	s.mu.Unlock()
	if recent {
		return false
	}
	s.log.Warn("vault denied a request; logging in again", "auth", s.method.name())
	return s.login(ctx) == nil
}

// ttlRemaining is the token's remaining lifetime; ok is false for a token
// that never expires or before the first login.
func (s *session) ttlRemaining() (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.hasToken || s.ttl == 0 {
		return 0, false
	}
	return s.ttl - s.now().Sub(s.measured), true
}

// untilDue is how long until the token should be renewed or replaced: at
// two thirds of its TTL, so that one failed attempt still leaves time.
func (s *session) untilDue() (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.hasToken {
		return 0, true
	}
	if s.ttl == 0 {
		return 0, false
	}
	return s.measured.Add(s.ttl * 2 / 3).Sub(s.now()), true
}

// maintain does what the token needs now: pick up a new token file, renew
// a token due for renewal, or log in again.
func (s *session) maintain(ctx context.Context) error {
	if s.method.changed() {
		s.log.Info("vault token file changed; switching token")
		return s.login(ctx)
	}
	d, expires := s.untilDue()
	if !expires || d > 0 {
		return nil
	}
	s.mu.Lock()
	renewable, loginTTL, hasToken := s.renewable, s.loginTTL, s.hasToken
	s.mu.Unlock()
	if hasToken && renewable {
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		start := s.now()
		info, err := s.be.RenewSelf(rctx)
		cancel()
		err = classify(opRenew, err)
		s.metrics.observe(opRenew, err, s.now().Sub(start))
		s.metrics.renewal(err)
		// A renewal that no longer restores at least half of the login TTL
		// means max_ttl is near: log in again instead, if we can.
		if err == nil && (info.TTL >= loginTTL/2 || !s.method.mints()) {
			s.mu.Lock()
			s.ttl, s.renewable, s.measured = info.TTL, info.Renewable, s.now()
			s.mu.Unlock()
			return nil
		}
		if err != nil {
			s.log.Warn("vault token renewal failed", "auth", s.method.name(), "err", err)
		}
	}
	if !s.method.mints() {
		if hasToken {
			return errors.New("vault token cannot be renewed and token auth cannot log in again")
		}
		return s.login(ctx)
	}
	return s.login(ctx)
}

// run maintains the token until ctx ends. poll bounds the wait, so that a
// rewritten token file is noticed.
func (s *session) run(ctx context.Context, poll time.Duration) {
	failures := 0
	for {
		wait := poll
		if d, ok := s.untilDue(); ok && d < wait {
			wait = max(d, 0)
		}
		if failures > 0 {
			wait = min(time.Second<<min(failures-1, 5), 30*time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := s.maintain(ctx); err != nil {
			failures++
			s.log.Warn("vault token maintenance failed", "auth", s.method.name(), "err", err)
			continue
		}
		failures = 0
	}
}
