package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/kms-plugin/kms-plugin/providers"
)

// Provider wraps DEKs with one Vault transit key. Create it with New.
type Provider struct {
	cfg     Config
	prefix  string // keyIDPrefix of this key
	be      backend
	sess    *session
	log     *slog.Logger
	metrics *metrics
	cache   *decryptCache
	now     func() time.Time

	// sf coalesces concurrent metadata reads, flights identical Decrypts.
	sf      singleflight.Group
	flights decryptFlights

	mu      sync.RWMutex
	meta    *keyMetadata // nil until the first successful read
	metaErr error        // why the key is unusable (deleted, denied), or nil
	readErr error        // the last transient failure to read metadata, shown until one succeeds

	stop      context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

var (
	_ providers.Provider  = (*Provider)(nil)
	_ providers.Rotator   = (*Provider)(nil)
	_ providers.KeyLister = (*Provider)(nil)
	_ providers.Retirer   = (*Provider)(nil)
)

// Retries: at most maxAttempts HTTP attempts per call, waiting
// firstBackoff, doubled each time up to maxBackoff, and only while the
// caller's deadline leaves room for another attempt.
const (
	maxAttempts    = 4
	firstBackoff   = 50 * time.Millisecond
	maxBackoff     = 400 * time.Millisecond
	minAttemptTime = 50 * time.Millisecond
)

// New logs in to Vault, reads the transit key's metadata and starts the
// background loops (metadata refresh, token renewal). Vault being
// unreachable is not fatal: the provider starts without a current key,
// reports ErrUnavailable, and keeps trying. Bad credentials, a missing key
// or a key type without associated data are configuration errors and fail.
func New(ctx context.Context, cfg Config, env providers.Env) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	be, err := newAPIBackend(cfg)
	if err != nil {
		return nil, err
	}
	return newProvider(ctx, cfg, be, env, time.Now)
}

func newProvider(ctx context.Context, cfg Config, be backend, env providers.Env, now func() time.Time) (*Provider, error) {
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("vault_key", cfg.Mount+"/"+cfg.Key)
	if cfg.TLSSkipVerify {
		log.Warn("DANGER: --vault-tls-skip-verify is set: Vault's certificate is NOT verified, so anyone on the network path " +
			"can impersonate Vault and read every DEK seed. Use --vault-cacert instead; never run this in production.")
	}
	for _, addr := range cfg.addrs() {
		if isPlainHTTP(addr) {
			log.Warn("DANGER: --vault-addr uses plain http: the Vault token and every DEK seed cross the network unencrypted. "+
				"Use https:// in production.", "vault_addr", addr)
		}
	}
	method, err := newAuthMethod(&cfg)
	if err != nil {
		return nil, err
	}
	p := &Provider{
		cfg:    cfg,
		prefix: keyIDPrefix(cfg.Namespace, cfg.Mount, cfg.Key),
		be:     be,
		log:    log,
		cache:  newDecryptCache(cfg.DecryptCacheSize, cfg.DecryptCacheTTL, now),
		now:    now,
	}
	p.metrics, err = newMetrics(env.Metrics, p.tokenTTLSeconds, p.keyVersion)
	if err != nil {
		return nil, fmt.Errorf("register vault metrics: %w", err)
	}
	p.sess = &session{be: be, method: method, timeout: cfg.Timeout, log: log, metrics: p.metrics, now: now}
	if p.cache != nil {
		log.Warn("decrypt cache is on: decrypted DEK seeds stay in memory and are served without asking Vault, "+
			"even after the key is revoked, until they expire", "size", cfg.DecryptCacheSize, "ttl", cfg.DecryptCacheTTL)
	}

	if err := p.sess.login(ctx); err != nil {
		if !errors.Is(err, providers.ErrUnavailable) {
			return nil, err
		}
		log.Warn("vault unreachable at start; retrying in the background", "err", err)
		p.mu.Lock()
		p.readErr = err
		p.mu.Unlock()
	} else if _, err := p.refresh(ctx); err != nil {
		if !errors.Is(err, providers.ErrUnavailable) {
			return nil, err
		}
		log.Warn("vault unreachable at start; retrying in the background", "err", err)
	}

	bg, stop := context.WithCancel(context.Background())
	p.stop = stop
	p.wg.Add(3)
	go func() { defer p.wg.Done(); p.sess.run(bg, cfg.RefreshInterval) }()
	go func() { defer p.wg.Done(); p.refreshLoop(bg) }()
	go func() { defer p.wg.Done(); p.followLoop(bg) }()
	return p, nil
}

// Close stops the background loops and forgets cached plaintexts.
func (p *Provider) Close() error {
	p.closeOnce.Do(func() {
		p.stop()
		p.wg.Wait()
		p.cache.purge()
	})
	return nil
}

// Current returns the latest key version as last read from Vault. It makes
// no remote call.
func (p *Provider) Current() (providers.Key, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.metaErr != nil {
		return providers.Key{}, fmt.Errorf("current vault key: %w", p.metaErr)
	}
	if p.meta == nil {
		if p.readErr != nil {
			// The cause, not only "not yet": it is what an operator
			// running kmsctl status needs, and it names no secret.
			return providers.Key{}, fmt.Errorf("current vault key: metadata not read yet: %w", p.readErr)
		}
		return providers.Key{}, fmt.Errorf("current vault key: metadata not read yet: %w", providers.ErrUnavailable)
	}
	v := p.meta.Latest
	created := p.meta.Created[v]
	return providers.Key{ID: keyID(p.prefix, v, created), Ref: encodeRef(v), Created: created}, nil
}

// Encrypt seals plaintext with exactly the version in key.Ref, binding aad
// and key.ID, and returns transit's ciphertext bytes without the
// "vault:vN:" prefix and base64.
func (p *Provider) Encrypt(ctx context.Context, key providers.Key, plaintext, aad []byte) ([]byte, error) {
	v, err := parseRef(key.Ref)
	if err != nil {
		return nil, fmt.Errorf("encrypt with key %s: bad key reference: %w", key.ID, providers.ErrInvalidArgument)
	}
	p.mu.RLock()
	unusable := p.metaErr
	p.mu.RUnlock()
	if unusable != nil {
		// The key was found deleted (or access revoked). Asking transit
		// anyway could, with a policy that grants "create", silently
		// recreate the key and wrap a DEK under a key_id that no longer
		// names it.
		return nil, fmt.Errorf("encrypt with key %s: %w", key.ID, unusable)
	}
	if id, ok := p.idFor(v); !ok || id != key.ID {
		return nil, fmt.Errorf("encrypt with key %s: not version %d of this transit key: %w", key.ID, v, providers.ErrInvalidArgument)
	}
	ad := associatedData(aad, key.ID)
	var s string
	err = p.call(ctx, opEncrypt, func(ctx context.Context) error {
		var err error
		s, err = p.be.Encrypt(ctx, v, plaintext, ad)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("encrypt with key %s: %w", key.ID, err)
	}
	ct, err := compactCiphertext(s, v)
	if err != nil {
		return nil, fmt.Errorf("encrypt with key %s: %w", key.ID, err)
	}
	return ct, nil
}

// Decrypt opens ciphertext after checking that key.ID names the version in
// key.Ref. Identical concurrent calls share one Vault request.
func (p *Provider) Decrypt(ctx context.Context, key providers.Key, ciphertext, aad []byte) ([]byte, error) {
	v, err := parseRef(key.Ref)
	if err != nil {
		return nil, fmt.Errorf("decrypt with key %s: %w", key.ID, err)
	}
	if len(ciphertext) == 0 {
		return nil, fmt.Errorf("decrypt with key %s: empty ciphertext: %w", key.ID, providers.ErrInvalidCiphertext)
	}
	if err := p.checkKeyID(ctx, v, key.ID); err != nil {
		return nil, fmt.Errorf("decrypt with key %s: %w", key.ID, err)
	}
	ck := decryptCacheKey(key.ID, v, ciphertext, aad)
	if pt, ok := p.cache.get(ck); ok {
		return pt, nil
	}
	pt, err := p.flights.do(ctx, ck, func() ([]byte, error) {
		// Detached from this caller's cancellation, so that it giving up
		// does not fail the others waiting on the result.
		dctx, cancel := p.detached(ctx)
		defer cancel()
		pt, err := p.decrypt(dctx, v, key.ID, ciphertext, aad)
		if err != nil {
			return nil, err
		}
		p.cache.put(ck, v, pt)
		return pt, nil
	})
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) { // gave up waiting for another caller's request
			return nil, fmt.Errorf("decrypt with key %s: %w: %w", key.ID, providers.ErrUnavailable, err)
		}
		return nil, fmt.Errorf("decrypt with key %s: %w", key.ID, err)
	}
	// Callers may zero their plaintext; each gets its own copy.
	return bytes.Clone(pt), nil
}

func (p *Provider) decrypt(ctx context.Context, v int64, keyID string, ciphertext, aad []byte) ([]byte, error) {
	var pt []byte
	err := p.call(ctx, opDecrypt, func(ctx context.Context) error {
		var err error
		pt, err = p.be.Decrypt(ctx, transitCiphertext(ciphertext, v), associatedData(aad, keyID))
		return err
	})
	return pt, err
}

// detached returns a context that ignores ctx's cancellation but ends at
// ctx's deadline or after one attempt's timeout, whichever is later.
func (p *Provider) detached(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(p.cfg.Timeout)
	if d, ok := ctx.Deadline(); ok && d.After(deadline) {
		deadline = d
	}
	return context.WithDeadline(context.WithoutCancel(ctx), deadline)
}

// checkKeyID fails with ErrInvalidCiphertext unless id is the key_id of
// version v, re-reading metadata once if v is newer than the cached latest
// (rotated elsewhere since the last refresh).
func (p *Provider) checkKeyID(ctx context.Context, v int64, id string) error {
	p.mu.RLock()
	m := p.meta
	p.mu.RUnlock()
	if m == nil || v > m.Latest {
		fresh, err := p.refresh(ctx)
		if err != nil {
			return err
		}
		m = &fresh
	}
	created, ok := m.Created[v]
	if !ok {
		if v < m.MinDecryptionVersion {
			return fmt.Errorf("version %d is below min_decryption_version %d: %w", v, m.MinDecryptionVersion, providers.ErrKeyRetired)
		}
		return fmt.Errorf("transit key has no version %d: %w", v, providers.ErrInvalidCiphertext)
	}
	if keyID(p.prefix, v, created) != id {
		return fmt.Errorf("key_id does not name version %d of this transit key: %w", v, providers.ErrInvalidCiphertext)
	}
	return nil
}

// idFor is the key_id of version v per the cached metadata.
func (p *Provider) idFor(v int64) (string, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.meta == nil {
		return "", false
	}
	created, ok := p.meta.Created[v]
	if !ok {
		return "", false
	}
	return keyID(p.prefix, v, created), true
}

// Probe data for Check: its own aad, so a probe ciphertext can never pass
// for a real one.
var (
	probePlaintext = []byte("kms-plugin vault health probe")
	probeAAD       = []byte("kms-plugin/vault/check")
)

// Check reads the key's metadata (refreshing Current) and round-trips a
// probe through the latest version, which exercises every permission the
// plugin needs. A deleted key or denied access is a revocation-class
// error; unreachable, sealed or throttled Vault is ErrUnavailable.
func (p *Provider) Check(ctx context.Context) error {
	if _, err := p.refresh(ctx); err != nil {
		return fmt.Errorf("check vault key: %w", err)
	}
	key, err := p.Current()
	if err != nil {
		return fmt.Errorf("check vault key: %w", err)
	}
	ct, err := p.Encrypt(ctx, key, probePlaintext, probeAAD)
	if err != nil {
		return fmt.Errorf("check vault key: %w", err)
	}
	v, _ := parseRef(key.Ref)
	pt, err := p.decrypt(ctx, v, key.ID, ct, probeAAD)
	if err != nil {
		return fmt.Errorf("check vault key: decrypt probe: %w", err)
	}
	if !bytes.Equal(pt, probePlaintext) {
		return errors.New("check vault key: probe decrypted to different bytes")
	}
	return nil
}

// Rotate adds a transit key version and makes it current at once.
func (p *Provider) Rotate(ctx context.Context) (providers.Key, error) {
	if err := p.call(ctx, opRotate, p.be.Rotate); err != nil {
		return providers.Key{}, fmt.Errorf("rotate vault key: %w", err)
	}
	if _, err := p.refresh(ctx); err != nil {
		return providers.Key{}, fmt.Errorf("rotate vault key: read new version: %w", err)
	}
	return p.Current()
}

// KeyStatus is the transit key's state as kmsctl shows it.
type KeyStatus struct {
	Name                 string              `json:"name"`
	Type                 string              `json:"type"`
	LatestVersion        int64               `json:"latest_version"`
	MinDecryptionVersion int64               `json:"min_decryption_version"`
	MinEncryptionVersion int64               `json:"min_encryption_version"`
	DeletionAllowed      bool                `json:"deletion_allowed"`
	Versions             []providers.KeyInfo `json:"versions"`
}

// Status reads the key's metadata from Vault now.
func (p *Provider) Status(ctx context.Context) (KeyStatus, error) {
	m, err := p.refresh(ctx)
	if err != nil {
		return KeyStatus{}, fmt.Errorf("read vault key: %w", err)
	}
	st := KeyStatus{
		Name:                 p.cfg.Key,
		Type:                 m.Type,
		LatestVersion:        m.Latest,
		MinDecryptionVersion: m.MinDecryptionVersion,
		MinEncryptionVersion: m.MinEncryptionVersion,
		DeletionAllowed:      m.DeletionAllowed,
	}
	// Transit archives versions below min_decryption_version and lists
	// neither them nor their creation times, so their key_ids are unknown;
	// versions below min_available_version are gone altogether.
	for v := max(m.MinAvailableVersion, 1); v < m.MinDecryptionVersion; v++ {
		if _, listed := m.Created[v]; !listed {
			st.Versions = append(st.Versions, providers.KeyInfo{Version: v, State: providers.StateRetired})
		}
	}
	for _, v := range m.versions() {
		state := providers.StateActive
		switch {
		case v == m.Latest:
			state = providers.StatePrimary
		case v < m.MinDecryptionVersion:
			state = providers.StateRetired
		}
		st.Versions = append(st.Versions, providers.KeyInfo{
			Version: v,
			KeyID:   keyID(p.prefix, v, m.Created[v]),
			State:   state,
			Created: m.Created[v],
		})
	}
	return st, nil
}

// Keys lists the key's versions, oldest first. Retired versions that
// transit archived have no KeyID or creation time.
func (p *Provider) Keys(ctx context.Context) ([]providers.KeyInfo, error) {
	st, err := p.Status(ctx)
	if err != nil {
		return nil, err
	}
	return st.Versions, nil
}

// RetireBelow sets min_decryption_version to version, so that versions
// below it no longer decrypt. It refuses a version above the latest, which
// would retire the version Encrypt uses.
func (p *Provider) RetireBelow(ctx context.Context, version int64) error {
	m, err := p.refresh(ctx)
	if err != nil {
		return fmt.Errorf("retire vault key versions below %d: %w", version, err)
	}
	if version < 1 || version > m.Latest {
		return fmt.Errorf("retire vault key versions below %d: the latest version is %d and must stay usable: %w",
			version, m.Latest, providers.ErrInvalidArgument)
	}
	err = p.call(ctx, opConfigure, func(ctx context.Context) error {
		return p.be.SetMinDecryptionVersion(ctx, version)
	})
	if err != nil {
		return fmt.Errorf("retire vault key versions below %d: %w", version, err)
	}
	if _, err := p.refresh(ctx); err != nil {
		return fmt.Errorf("retire vault key versions below %d: re-read key: %w", version, err)
	}
	return nil
}

// refresh reads the key's metadata and caches it; concurrent callers share
// one read.
func (p *Provider) refresh(ctx context.Context) (keyMetadata, error) {
	r, err, _ := p.sf.Do("refresh", func() (any, error) {
		var m keyMetadata
		err := p.call(ctx, opReadKey, func(ctx context.Context) error {
			var err error
			m, err = p.be.ReadKey(ctx)
			return err
		})
		if err == nil {
			if uerr := m.usable(); uerr != nil {
				err = fmt.Errorf("%w: %w", providers.ErrNotConfigured, uerr)
			}
		}
		p.setMeta(m, err)
		return m, err
	})
	if err != nil {
		return keyMetadata{}, fmt.Errorf("read transit key %s: %w", p.cfg.Key, err)
	}
	return r.(keyMetadata), nil
}

// setMeta records the outcome of a metadata read. Transient errors keep
// the last good metadata, so Encrypt and Decrypt go on while Vault blips.
func (p *Provider) setMeta(m keyMetadata, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err == nil:
		old := p.meta
		p.meta, p.metaErr, p.readErr = &m, nil, nil
		if old == nil || old.Latest != m.Latest || !old.Created[old.Latest].Equal(m.Created[m.Latest]) {
			p.log.Info("vault key version", "key_id", keyID(p.prefix, m.Latest, m.Created[m.Latest]), "version", m.Latest)
		}
		if old != nil && m.MinDecryptionVersion > old.MinDecryptionVersion {
			p.cache.dropBelow(m.MinDecryptionVersion)
		}
	case errors.Is(err, providers.ErrUnavailable):
		// keep what we had, and remember why for Current
		p.readErr = err
	default:
		if p.metaErr == nil {
			p.log.Error("vault key unusable", "err", err)
		}
		p.metaErr = err
		p.cache.purge()
	}
}

func (p *Provider) refreshLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout*maxAttempts)
		if _, err := p.refresh(rctx); err != nil && ctx.Err() == nil {
			p.log.Warn("vault key refresh failed", "err", err)
		}
		cancel()
	}
}

// leaderSearch bounds how long, after a failover, the provider keeps
// asking once a second which node leads: an election takes seconds.
const leaderSearch = 30

// followLoop keeps calls going to the active node of a Vault cluster: it
// asks the cluster for its leader at every refresh interval and, after a
// call had to move on from a node, once a second until a leader is known.
// Calls work without it (standbys forward them); it saves their hop.
func (p *Provider) followLoop(ctx context.Context) {
	moved := p.be.NodeMoved()
	if moved == nil {
		return
	}
	t := time.NewTicker(p.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-moved:
		}
		for range leaderSearch {
			lctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
			found, err := p.be.FollowLeader(lctx)
			cancel()
			if found || ctx.Err() != nil {
				break
			}
			p.log.Debug("vault cluster has no known leader yet", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

// call runs one Vault operation with classification, metrics and
// retries. Transient failures are retried with backoff while ctx's
// deadline leaves room; a denial is retried once if the session can get a
// different token (revoked token, rewritten token file).
func (p *Provider) call(ctx context.Context, o op, fn func(context.Context) error) error {
	reauthed := false
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
		start := p.now()
		err := classify(o, fn(actx))
		cancel()
		p.metrics.observe(o, err, p.now().Sub(start))
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		if errors.Is(err, providers.ErrPermissionDenied) && !reauthed {
			reauthed = true
			if p.sess.recover(ctx) {
				attempt--
				continue
			}
			return err
		}
		if !errors.Is(err, providers.ErrUnavailable) || attempt >= maxAttempts {
			return err
		}
		wait := backoff(attempt)
		if d, ok := ctx.Deadline(); ok && time.Until(d) < wait+minAttemptTime {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// backoff is the wait before attempt+1: exponential with jitter.
func backoff(attempt int) time.Duration {
	d := min(firstBackoff<<(attempt-1), maxBackoff)
	return d/2 + rand.N(d/2+1)
}

func (p *Provider) tokenTTLSeconds() float64 {
	ttl, ok := p.sess.ttlRemaining()
	if !ok {
		return -1
	}
	return max(ttl.Seconds(), 0)
}

func (p *Provider) keyVersion() float64 {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.meta == nil {
		return 0
	}
	return float64(p.meta.Latest)
}

// isPlainHTTP reports whether addr is an http:// URL to a host other than
// the loopback interface (where a local Vault agent may listen safely).
func isPlainHTTP(addr string) bool {
	u, err := url.Parse(addr)
	if err != nil || !strings.EqualFold(u.Scheme, "http") {
		return false
	}
	if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsLoopback() {
		return false
	}
	return u.Hostname() != "localhost"
}
