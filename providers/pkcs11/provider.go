//go:build pkcs11

package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	p11 "github.com/miekg/pkcs11"
	"golang.org/x/sync/singleflight"

	"github.com/kms-plugin/kms-plugin/providers"
)

// Provider seals DEK seeds with AES-256 keys inside a PKCS#11 token.
// Create it with New.
type Provider struct {
	cfg Config
	pin string
	// refused is the hash of the PIN the token last refused, and
	// refusedErr its refusal: a reconnect does not try that PIN again
	// (tokens lock a PIN after a few wrong tries), but waits for the PIN
	// file to change.
	refused    [sha256.Size]byte
	refusedErr error
	mod        *module
	log        *slog.Logger
	metrics    *metrics

	// connMu guards conn: calls hold it shared while they use a session,
	// a reconnect holds it exclusively while it rebuilds the sessions.
	connMu sync.RWMutex
	conn   *conn
	// down is set when a call found the session or token gone, until a
	// reconnect succeeds; downErr says why.
	down    atomic.Bool
	downErr atomic.Pointer[error]
	lost    chan struct{}
	gen     atomic.Uint64 // connection generation, for the check value cache

	keys atomic.Pointer[keyset]
	sf   singleflight.Group

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

// conn is one set of logged-in sessions on the token.
type conn struct {
	slot     uint
	info     p11.TokenInfo
	token    string // tokenName(info.Label)
	sessions chan p11.SessionHandle
	all      []p11.SessionHandle
}

// keyset is an immutable view of the key's versions on the token.
type keyset struct {
	gen      uint64
	token    string
	versions map[int64]*version
	primary  int64 // 0: no version can encrypt
	maxSeen  int64 // highest version label on the token, usable or not
}

type version struct {
	v       int64
	handle  p11.ObjectHandle
	check   string
	id      string
	state   providers.KeyState
	created time.Time
}

// TokenInfo is what kmsctl shows about the token.
type TokenInfo struct {
	Label        string `json:"label"`
	Manufacturer string `json:"manufacturer"`
	Model        string `json:"model"`
	Serial       string `json:"serial"`
	Slot         uint   `json:"slot"`
}

// New loads the module, logs in to the token with the PIN file and reads
// the key's versions, then keeps the sessions alive and re-reads the
// versions every RefreshInterval. A token that cannot be reached at start
// (not present, module failing) is not fatal for the plugin: it starts
// unhealthy and keeps trying. A bad configuration, a refused PIN or a
// token without the key fails.
func New(ctx context.Context, cfg Config, env providers.Env) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("pkcs11_key", cfg.KeyLabel)
	pin, err := readPIN(cfg.PINFile, cfg.operator)
	if err != nil {
		return nil, err
	}
	p := &Provider{cfg: cfg, pin: pin, log: log, lost: make(chan struct{}, 1)}
	p.metrics, err = newMetrics(env.Metrics, p.keyVersion, p.connected)
	if err != nil {
		return nil, fmt.Errorf("register pkcs11 metrics: %w", err)
	}
	if p.mod, err = openModule(cfg.Module); err != nil {
		return nil, err
	}
	if err := p.reconnect(ctx, false); err != nil {
		if !errors.Is(err, providers.ErrUnavailable) || cfg.allowNoKey {
			p.closeSessions()
			p.mod.release()
			return nil, err
		}
		log.Warn("pkcs11 token unavailable at start; retrying in the background", "err", err)
	} else if ks := p.keys.Load(); ks.primary == 0 && !cfg.allowNoKey {
		p.closeSessions()
		p.mod.release()
		return nil, fmt.Errorf("token %q holds no usable version of key %q (objects labelled %s): generate the first with kmsctl pkcs11 rotate: %w",
			ks.token, cfg.KeyLabel, objectLabel(cfg.KeyLabel, 1), providers.ErrNotConfigured)
	}
	bg, stop := context.WithCancel(context.Background())
	p.stop = stop
	p.wg.Add(1)
	go func() { defer p.wg.Done(); p.run(bg) }()
	return p, nil
}

// Close stops the background loop, closes the sessions (which logs out)
// and releases the module.
func (p *Provider) Close() error {
	p.closeOnce.Do(func() {
		p.stop()
		p.wg.Wait()
		p.closeSessions()
		p.mod.release()
	})
	return nil
}

func (p *Provider) closeSessions() {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.conn == nil {
		return
	}
	for _, sh := range p.conn.all {
		_ = p.mod.ctx.CloseSession(sh)
	}
	p.conn = nil
}

// Current returns the highest version that may encrypt, as last read from
// the token. It makes no call to the module.
func (p *Provider) Current() (providers.Key, error) {
	ks := p.keys.Load()
	if ks == nil {
		return providers.Key{}, fmt.Errorf("current pkcs11 key: token not read yet: %w", p.downError())
	}
	if ks.primary == 0 {
		return providers.Key{}, fmt.Errorf("current pkcs11 key: token %q holds no usable version of key %q: %w", ks.token, p.cfg.KeyLabel, providers.ErrKeyNotFound)
	}
	v := ks.versions[ks.primary]
	return providers.Key{ID: v.id, Ref: encodeRef(v.v), Created: v.created}, nil
}

// downError is why the provider has no connection, as ErrUnavailable.
func (p *Provider) downError() error {
	if e := p.downErr.Load(); e != nil {
		if errors.Is(*e, providers.ErrUnavailable) {
			return *e
		}
		return fmt.Errorf("%w: %w", providers.ErrUnavailable, *e)
	}
	return providers.ErrUnavailable
}

// Encrypt seals plaintext with AES-GCM under the version in key.Ref,
// which key.ID must name, with a fresh random IV.
func (p *Provider) Encrypt(ctx context.Context, key providers.Key, plaintext, aad []byte) ([]byte, error) {
	v, err := parseRef(key.Ref)
	if err != nil {
		return nil, fmt.Errorf("encrypt with key %s: bad key reference: %w", key.ID, providers.ErrInvalidArgument)
	}
	if len(plaintext) == 0 || len(plaintext) > maxPlaintext {
		return nil, fmt.Errorf("encrypt with key %s: plaintext of %d bytes, want 1..%d: %w", key.ID, len(plaintext), maxPlaintext, providers.ErrInvalidArgument)
	}
	ks := p.keys.Load()
	if ks == nil {
		return nil, fmt.Errorf("encrypt with key %s: %w", key.ID, p.downError())
	}
	ver := ks.versions[v]
	switch {
	case ver == nil || ver.id != key.ID:
		return nil, fmt.Errorf("encrypt with key %s: not version %d of key %q on this token: %w", key.ID, v, p.cfg.KeyLabel, providers.ErrInvalidArgument)
	case ver.state == providers.StateRetired:
		return nil, fmt.Errorf("encrypt with key %s: version %d is retired: %w", key.ID, v, providers.ErrKeyRetired)
	}
	iv := make([]byte, ivSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("encrypt with key %s: generate IV: %w", key.ID, err)
	}
	ad := associatedData(aad, key.ID)
	var out []byte
	err = p.withSession(ctx, "encrypt", func(sh p11.SessionHandle) error {
		params := p11.NewGCMParams(iv, ad, tagSize*8)
		defer params.Free()
		if err := p.mod.ctx.EncryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, ver.handle); err != nil {
			return err
		}
		ct, err := p.mod.ctx.Encrypt(sh, plaintext)
		if err != nil {
			return err
		}
		// A token may choose the IV itself and write it back.
		if used := params.IV(); len(used) == ivSize {
			iv = used
		} else {
			return fmt.Errorf("the token used a %d-byte GCM IV, want %d", len(used), ivSize)
		}
		if len(ct) != len(plaintext)+tagSize {
			return fmt.Errorf("the token returned %d bytes of GCM output for %d bytes of plaintext, want %d", len(ct), len(plaintext), len(plaintext)+tagSize)
		}
		out = make([]byte, 0, 1+ivSize+len(ct))
		out = append(out, formatGCM)
		out = append(out, iv...)
		out = append(out, ct...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("encrypt with key %s: %w", key.ID, err)
	}
	return out, nil
}

// Decrypt opens a ciphertext made by Encrypt, after checking that key.ID
// names the version in key.Ref on this token.
func (p *Provider) Decrypt(ctx context.Context, key providers.Key, ciphertext, aad []byte) ([]byte, error) {
	v, err := parseRef(key.Ref)
	if err != nil {
		return nil, fmt.Errorf("decrypt with key %s: %w", key.ID, err)
	}
	iv, body, err := splitCiphertext(ciphertext)
	if err != nil {
		return nil, fmt.Errorf("decrypt with key %s: %w", key.ID, err)
	}
	ver, err := p.lookup(ctx, v, key.ID)
	if err != nil {
		return nil, fmt.Errorf("decrypt with key %s: %w", key.ID, err)
	}
	ad := associatedData(aad, key.ID)
	var pt []byte
	err = p.withSession(ctx, "decrypt", func(sh p11.SessionHandle) error {
		params := p11.NewGCMParams(iv, ad, tagSize*8)
		defer params.Free()
		if err := p.mod.ctx.DecryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, ver.handle); err != nil {
			return err
		}
		var err error
		if pt, err = p.mod.ctx.Decrypt(sh, body); err != nil {
			return p.decryptFailure(sh, err)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, providers.ErrKeyRetired) {
			p.refreshSoon() // retired by another node since the last read
		}
		return nil, fmt.Errorf("decrypt with key %s: %w", key.ID, err)
	}
	if len(pt) != len(body)-tagSize {
		clear(pt)
		return nil, fmt.Errorf("decrypt with key %s: the token returned %d bytes for %d bytes of ciphertext: %w", key.ID, len(pt), len(body), providers.ErrUnavailable)
	}
	return pt, nil
}

// decryptFailure tells a failed tag check from a failing token. Tokens
// differ in how they report a GCM tag that does not verify: PKCS#11 3.0
// says CKR_AEAD_DECRYPT_FAILED, 2.40 tokens say CKR_ENCRYPTED_DATA_INVALID,
// and some (SoftHSM 2.6) say CKR_GENERAL_ERROR or CKR_FUNCTION_FAILED. For
// those two, the session is asked for its state: if the session and token
// answer, the operation failed on the data, not on the token, and the
// ciphertext is refused as invalid.
func (p *Provider) decryptFailure(sh p11.SessionHandle, err error) error {
	var e p11.Error
	if !errors.As(err, &e) || (e != p11.CKR_GENERAL_ERROR && e != p11.CKR_FUNCTION_FAILED) {
		return err
	}
	if _, serr := p.mod.ctx.GetSessionInfo(sh); serr != nil {
		return err
	}
	return fmt.Errorf("authentication failed (the token answered %s and its session is healthy): %w", e.Error(), providers.ErrInvalidCiphertext)
}

// lookup finds version v, reading the token again if v is newer than what
// was last read (rotated by another node since), and checks that id is its
// key_id and that it may decrypt.
func (p *Provider) lookup(ctx context.Context, v int64, id string) (*version, error) {
	ks := p.keys.Load()
	if ks == nil || (ks.versions[v] == nil && v > ks.maxSeen) {
		var err error
		if ks, err = p.refresh(ctx); err != nil {
			return nil, err
		}
	}
	ver := ks.versions[v]
	switch {
	case ver == nil:
		return nil, fmt.Errorf("token %q holds no usable version %d of key %q: %w", ks.token, v, p.cfg.KeyLabel, providers.ErrKeyNotFound)
	case ver.id != id:
		stem := strings.TrimSuffix(ver.id, ver.check)
		if rest, ok := strings.CutPrefix(id, stem); ok && len(rest) == checkHexDigits {
			return nil, fmt.Errorf("key_id names another key than version %d on this token (%s): the plugins use different tokens or keys: %w", v, ver.id, providers.ErrKeyNotFound)
		}
		return nil, fmt.Errorf("key_id does not name version %d of key %q on this token: %w", v, p.cfg.KeyLabel, providers.ErrInvalidCiphertext)
	case ver.state == providers.StateRetired:
		return nil, fmt.Errorf("version %d is retired: %w", v, providers.ErrKeyRetired)
	}
	return ver, nil
}

// Probe data for Check: its own aad, so that a probe ciphertext can never
// pass for a real one.
var (
	probePlaintext = []byte("kms-plugin pkcs11 health probe")
	probeAAD       = []byte("kms-plugin/pkcs11/check")
)

// Check reads the token's key versions (refreshing Current) and
// round-trips a probe through the current version. While the provider has
// lost its session or the token, it reports ErrUnavailable.
func (p *Provider) Check(ctx context.Context) error {
	if p.down.Load() {
		return fmt.Errorf("check pkcs11 token: %w", p.downError())
	}
	if _, err := p.refresh(ctx); err != nil {
		return fmt.Errorf("check pkcs11 token: %w", err)
	}
	key, err := p.Current()
	if err != nil {
		return fmt.Errorf("check pkcs11 token: %w", err)
	}
	ct, err := p.Encrypt(ctx, key, probePlaintext, probeAAD)
	if err != nil {
		return fmt.Errorf("check pkcs11 token: %w", err)
	}
	pt, err := p.Decrypt(ctx, key, ct, probeAAD)
	if err != nil {
		return fmt.Errorf("check pkcs11 token: decrypt probe: %w", err)
	}
	if !bytes.Equal(pt, probePlaintext) {
		return errors.New("check pkcs11 token: probe decrypted to different bytes")
	}
	return nil
}

// withSession runs fn on a session of its own, waiting for one to be free
// (one operation per session at a time), classifies its error and
// records it. A lost session or token starts a reconnect.
func (p *Provider) withSession(ctx context.Context, op string, fn func(p11.SessionHandle) error) error {
	start := time.Now()
	err := p.useSession(ctx, fn)
	p.metrics.observe(op, err, time.Since(start))
	if err != nil && isLost(err) {
		p.markLost(err)
	}
	return err
}

func (p *Provider) useSession(ctx context.Context, fn func(p11.SessionHandle) error) error {
	p.connMu.RLock()
	defer p.connMu.RUnlock()
	c := p.conn
	if c == nil || p.down.Load() {
		return p.downError()
	}
	var sh p11.SessionHandle
	select {
	case sh = <-c.sessions:
	case <-ctx.Done():
		return fmt.Errorf("wait for a free pkcs11 session: %w: %w", providers.ErrUnavailable, ctx.Err())
	}
	defer func() { c.sessions <- sh }()
	return classify(fn(sh))
}

// markLost records that the session or token is gone and wakes the
// background loop to reconnect. Until then Check fails.
func (p *Provider) markLost(err error) {
	p.downErr.Store(&err)
	if !p.down.Swap(true) {
		p.log.Error("pkcs11 session or token lost; reconnecting", "err", err)
	}
	select {
	case p.lost <- struct{}{}:
	default:
	}
}

// refreshSoon asks the background loop to read the token now.
func (p *Provider) refreshSoon() {
	select {
	case p.lost <- struct{}{}:
	default:
	}
}

// run reconnects while the token is lost (backing off from 250 ms to 5 s)
// and re-reads the key versions every RefreshInterval.
func (p *Provider) run(ctx context.Context) {
	t := time.NewTicker(p.cfg.RefreshInterval)
	defer t.Stop()
	wait := 250 * time.Millisecond
	for {
		if p.down.Load() || p.keys.Load() == nil {
			if err := p.reconnect(ctx, true); err != nil {
				if ctx.Err() != nil {
					return
				}
				p.log.Warn("pkcs11 reconnect failed", "err", err, "retry_in", wait)
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				wait = min(wait*2, 5*time.Second)
				continue
			}
			wait = 250 * time.Millisecond
			p.log.Info("pkcs11 token reconnected", "token", p.keys.Load().token)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.lost:
		}
		if p.down.Load() {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if _, err := p.refresh(rctx); err != nil && ctx.Err() == nil {
			p.log.Warn("pkcs11 key refresh failed", "err", err)
		}
		cancel()
	}
}

// reconnect closes every session, re-initializes the module if it may
// (the token may have been removed and put back), finds the token, opens
// the sessions, logs in and reads the key versions.
func (p *Provider) reconnect(ctx context.Context, again bool) (err error) {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if again {
		defer func() { p.metrics.reconnect(err) }()
	}
	if p.conn != nil {
		for _, sh := range p.conn.all {
			_ = p.mod.ctx.CloseSession(sh)
		}
		p.conn = nil
	}
	if again {
		// The PIN file is read again, so that a PIN changed on the token
		// and in the file is taken up without a restart.
		pin, err := readPIN(p.cfg.PINFile, p.cfg.operator)
		if err != nil {
			p.downErr.Store(&err)
			return err
		}
		if p.refusedErr != nil && sha256.Sum256([]byte(pin)) == p.refused {
			err := fmt.Errorf("not logging in again with the PIN the token refused; write the right PIN to %s: %w", p.cfg.PINFile, p.refusedErr)
			p.downErr.Store(&err)
			return err
		}
		p.pin = pin
		if _, err := p.mod.reinitialize(); err != nil {
			p.downErr.Store(&err)
			return err
		}
	}
	c, err := p.connect()
	if err != nil {
		p.downErr.Store(&err)
		return err
	}
	gen := p.gen.Add(1)
	sh := <-c.sessions
	ks, err := p.scan(ctx, sh, c.token, gen, nil)
	c.sessions <- sh
	if err != nil {
		for _, sh := range c.all {
			_ = p.mod.ctx.CloseSession(sh)
		}
		p.downErr.Store(&err)
		return err
	}
	p.conn = c
	p.setKeys(ks)
	p.down.Store(false)
	p.downErr.Store(nil)
	return nil
}

// connect finds the token, opens cfg.Sessions sessions and logs in.
func (p *Provider) connect() (*conn, error) {
	ctx := p.mod.ctx
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return nil, fmt.Errorf("list pkcs11 slots: %w", classify(err))
	}
	c := &conn{}
	found := false
	var labels []string
	for _, s := range slots {
		info, err := ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		label := strings.TrimRight(info.Label, " \x00")
		labels = append(labels, fmt.Sprintf("%d:%q", s, label))
		if (p.cfg.Slot >= 0 && uint(p.cfg.Slot) == s) || (p.cfg.Slot < 0 && label == p.cfg.TokenLabel) {
			if found {
				return nil, fmt.Errorf("two tokens are labelled %q (slots %d and %d): select one with --pkcs11-slot: %w", label, c.slot, s, providers.ErrNotConfigured)
			}
			c.slot, c.info, c.token, found = s, info, tokenName(label), true
		}
	}
	if !found {
		want := fmt.Sprintf("labelled %q", p.cfg.TokenLabel)
		if p.cfg.Slot >= 0 {
			want = fmt.Sprintf("in slot %d", p.cfg.Slot)
		}
		return nil, fmt.Errorf("no pkcs11 token %s in module %s (tokens present: %s): %w", want, p.cfg.Module, strings.Join(labels, ", "), providers.ErrUnavailable)
	}
	c.sessions = make(chan p11.SessionHandle, p.cfg.Sessions)
	fail := func(err error) (*conn, error) {
		for _, sh := range c.all {
			_ = ctx.CloseSession(sh)
		}
		return nil, err
	}
	for range p.cfg.Sessions {
		sh, err := ctx.OpenSession(c.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			return fail(fmt.Errorf("open a session on token %q: %w", c.token, classify(err)))
		}
		c.all = append(c.all, sh)
		c.sessions <- sh
	}
	// Logging in on one session logs the application in on all of them.
	if err := ctx.Login(c.all[0], p11.CKU_USER, p.pin); err != nil {
		var e p11.Error
		if !errors.As(err, &e) || e != p11.CKR_USER_ALREADY_LOGGED_IN {
			err = fmt.Errorf("log in to token %q with the PIN from %s: %w", c.token, p.cfg.PINFile, classify(err))
			if errors.Is(err, providers.ErrPermissionDenied) {
				p.refused, p.refusedErr = sha256.Sum256([]byte(p.pin)), err
			}
			return fail(err)
		}
	}
	p.refusedErr = nil
	return c, nil
}

// refresh reads the key versions from the token; concurrent callers share
// one read.
func (p *Provider) refresh(ctx context.Context) (*keyset, error) {
	r, err, _ := p.sf.Do("refresh", func() (any, error) {
		var ks *keyset
		err := p.withSession(ctx, "scan", func(sh p11.SessionHandle) error {
			var err error
			ks, err = p.scan(ctx, sh, "", p.gen.Load(), p.keys.Load())
			return err
		})
		if err != nil {
			return nil, err
		}
		if old := p.keys.Load(); !p.cfg.allowNoKey && old != nil && old.gen == ks.gen && old.primary != 0 && ks.primary == 0 {
			// Every version gone at once is what a removed token looks
			// like to some modules (SoftHSM lists no objects). Reconnect
			// before believing it: a removed token is then unavailable,
			// and keys really deleted show as such on the new sessions.
			err := fmt.Errorf("every version of key %q vanished from token %q; reconnecting to tell a removed token from deleted keys: %w",
				p.cfg.KeyLabel, ks.token, providers.ErrUnavailable)
			p.markLost(err)
			return nil, err
		}
		p.setKeys(ks)
		return ks, nil
	})
	if err != nil {
		return nil, fmt.Errorf("read key %q from the token: %w", p.cfg.KeyLabel, err)
	}
	return r.(*keyset), nil
}

func (p *Provider) setKeys(ks *keyset) {
	old := p.keys.Swap(ks)
	if ks.primary != 0 && (old == nil || old.primary != ks.primary || old.versions[old.primary].id != ks.versions[ks.primary].id) {
		p.log.Info("pkcs11 key version", "key_id", ks.versions[ks.primary].id, "version", ks.primary)
	}
}

// scan lists the key's versions on the token. prev, from the same
// connection generation, lends its check values for handles it knew.
func (p *Provider) scan(ctx context.Context, sh p11.SessionHandle, token string, gen uint64, prev *keyset) (*keyset, error) {
	if token == "" {
		if prev == nil {
			return nil, errors.New("no token read yet")
		}
		token = prev.token
	}
	if prev != nil && prev.gen != gen {
		prev = nil
	}
	m := p.mod.ctx
	tmpl := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
	}
	if err := m.FindObjectsInit(sh, tmpl); err != nil {
		return nil, fmt.Errorf("find key objects: %w", classify(err))
	}
	var handles []p11.ObjectHandle
	for {
		hs, _, err := m.FindObjects(sh, 64)
		if err != nil {
			_ = m.FindObjectsFinal(sh)
			return nil, fmt.Errorf("find key objects: %w", classify(err))
		}
		if len(hs) == 0 {
			break
		}
		handles = append(handles, hs...)
		if len(handles) > 100000 {
			_ = m.FindObjectsFinal(sh)
			return nil, errors.New("find key objects: more than 100000 secret keys on the token")
		}
	}
	if err := m.FindObjectsFinal(sh); err != nil {
		return nil, fmt.Errorf("find key objects: %w", classify(err))
	}
	ks := &keyset{gen: gen, token: token, versions: map[int64]*version{}}
	seen := map[int64]int{}
	for _, h := range handles {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		attrs, err := m.GetAttributeValue(sh, h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_LABEL, nil),
			p11.NewAttribute(p11.CKA_ID, nil),
			p11.NewAttribute(p11.CKA_DECRYPT, nil),
			p11.NewAttribute(p11.CKA_SENSITIVE, nil),
			p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
			p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
		})
		if err != nil {
			var e p11.Error
			if errors.As(err, &e) && (e == p11.CKR_OBJECT_HANDLE_INVALID || e == p11.CKR_ATTRIBUTE_SENSITIVE || e == p11.CKR_ATTRIBUTE_TYPE_INVALID) {
				continue // deleted meanwhile, or not an object of ours
			}
			return nil, fmt.Errorf("read key object attributes: %w", classify(err))
		}
		a := attrMap(attrs)
		v, ok := parseObjectLabel(p.cfg.KeyLabel, string(a[p11.CKA_LABEL]))
		if !ok {
			continue
		}
		ks.maxSeen = max(ks.maxSeen, v)
		seen[v]++
		if idv, ok := parseObjectID(a[p11.CKA_ID]); !ok || idv != v {
			p.log.Error("pkcs11 key object ignored: its CKA_ID does not carry its version", "label", objectLabel(p.cfg.KeyLabel, v), "cka_id", hex.EncodeToString(a[p11.CKA_ID]))
			continue
		}
		if !isTrue(a[p11.CKA_SENSITIVE]) || !isFalse(a[p11.CKA_EXTRACTABLE]) || ulong(a[p11.CKA_VALUE_LEN]) != 32 {
			p.log.Error("pkcs11 key object ignored: it must be a sensitive, non-extractable AES-256 key", "label", objectLabel(p.cfg.KeyLabel, v))
			continue
		}
		ver := &version{v: v, handle: h, state: providers.StateActive}
		if !isTrue(a[p11.CKA_DECRYPT]) {
			ver.state = providers.StateRetired
		}
		if prev != nil {
			if pv := prev.versions[v]; pv != nil && pv.handle == h {
				ver.check, ver.created = pv.check, pv.created
			}
		}
		if ver.check == "" {
			if ver.check, err = p.checkValue(sh, h); err != nil {
				return nil, fmt.Errorf("check value of %s: %w", objectLabel(p.cfg.KeyLabel, v), err)
			}
			ver.created = p.startDate(sh, h)
		}
		ver.id = keyID(token, p.cfg.KeyLabel, v, ver.check)
		ks.versions[v] = ver
	}
	for v, n := range seen {
		if n > 1 {
			p.log.Error("pkcs11 key version ignored: several objects carry its label", "label", objectLabel(p.cfg.KeyLabel, v), "objects", n)
			delete(ks.versions, v)
		}
	}
	for v, ver := range ks.versions {
		if ver.state != providers.StateRetired && v > ks.primary {
			ks.primary = v
		}
	}
	if ks.primary != 0 {
		ks.versions[ks.primary].state = providers.StatePrimary
	}
	return ks, nil
}

// checkValue encrypts a zero block with the key on the token (AES-ECB, or
// AES-CBC with a zero IV, which gives the same block, on tokens without
// ECB) and returns the first 8 bytes in hex: a public fingerprint that
// differs between two different keys.
func (p *Provider) checkValue(sh p11.SessionHandle, h p11.ObjectHandle) (string, error) {
	m := p.mod.ctx
	zero := make([]byte, 16)
	var out []byte
	err := m.EncryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_ECB, nil)}, h)
	if err == nil {
		out, err = m.Encrypt(sh, zero)
	} else if errors.Is(classify(err), providers.ErrNotConfigured) {
		if err = m.EncryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_CBC, make([]byte, 16))}, h); err == nil {
			out, err = m.Encrypt(sh, zero)
		}
	}
	if err != nil {
		return "", classify(err)
	}
	if len(out) < 16 {
		return "", fmt.Errorf("the token returned %d bytes for one block", len(out))
	}
	return hex.EncodeToString(out[:checkHexDigits/2]), nil
}

func attrMap(attrs []*p11.Attribute) map[uint][]byte {
	m := make(map[uint][]byte, len(attrs))
	for _, a := range attrs {
		if a != nil {
			m[a.Type] = a.Value
		}
	}
	return m
}

func isTrue(b []byte) bool  { return len(b) == 1 && b[0] != 0 }
func isFalse(b []byte) bool { return len(b) == 1 && b[0] == 0 }

// ulong reads a CK_ULONG attribute (the host's byte order and size).
func ulong(b []byte) uint64 {
	switch len(b) {
	case 4:
		return uint64(binary.NativeEndian.Uint32(b))
	case 8:
		return binary.NativeEndian.Uint64(b)
	}
	return 0
}

// startDate reads CKA_START_DATE, which Rotate sets to the creation day.
// It is read apart from the other attributes and its errors are ignored:
// some tokens (SoftHSM 2.6) fail to return dates, and a key with no date
// is still a good key.
func (p *Provider) startDate(sh p11.SessionHandle, h p11.ObjectHandle) time.Time {
	attrs, err := p.mod.ctx.GetAttributeValue(sh, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_START_DATE, nil)})
	if err != nil || len(attrs) != 1 {
		return time.Time{}
	}
	return parseDate(attrs[0].Value)
}

// parseDate reads a CK_DATE ("YYYYMMDD"); zero if absent or malformed.
func parseDate(b []byte) time.Time {
	t, err := time.Parse("20060102", string(b))
	if err != nil {
		return time.Time{}
	}
	return t
}

// Rotate generates the next version on the token, as a sensitive,
// non-extractable AES-256 key, and makes it current.
func (p *Provider) Rotate(ctx context.Context) (providers.Key, error) {
	ks, err := p.refresh(ctx)
	if err != nil {
		return providers.Key{}, fmt.Errorf("rotate pkcs11 key: %w", err)
	}
	next := ks.maxSeen + 1
	if next > maxVersion {
		return providers.Key{}, fmt.Errorf("rotate pkcs11 key: no version number left: %w", providers.ErrInvalidArgument)
	}
	label := objectLabel(p.cfg.KeyLabel, next)
	var created p11.ObjectHandle
	err = p.withSession(ctx, "generate", func(sh p11.SessionHandle) error {
		var err error
		created, err = p.mod.ctx.GenerateKey(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, keyTemplate(label, next, time.Now()))
		return err
	})
	if err != nil {
		return providers.Key{}, fmt.Errorf("rotate pkcs11 key: generate %s: %w", label, err)
	}
	ks, err = p.refresh(ctx)
	if err != nil {
		return providers.Key{}, fmt.Errorf("rotate pkcs11 key: read the new version: %w", err)
	}
	if ks.versions[next] == nil || ks.versions[next].handle != created {
		// Another rotation made the same version at the same time: undo ours.
		_ = p.withSession(ctx, "generate", func(sh p11.SessionHandle) error { return p.mod.ctx.DestroyObject(sh, created) })
		_, _ = p.refresh(ctx)
		return providers.Key{}, fmt.Errorf("rotate pkcs11 key: another rotation created %s at the same time; run it again: %w", label, providers.ErrUnavailable)
	}
	return p.Current()
}

// keyTemplate is the template of a new key version: a token object, AES
// 256, private, sensitive, never extractable, for encryption and
// decryption only; modifiable so that retiring can clear CKA_DECRYPT.
func keyTemplate(label string, v int64, now time.Time) []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_MODIFIABLE, true),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_WRAP, false),
		p11.NewAttribute(p11.CKA_UNWRAP, false),
		p11.NewAttribute(p11.CKA_SIGN, false),
		p11.NewAttribute(p11.CKA_VERIFY, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_ID, objectID(v)),
		p11.NewAttribute(p11.CKA_START_DATE, now.UTC()),
	}
}

// Keys lists the key's versions on the token, oldest first.
func (p *Provider) Keys(ctx context.Context) ([]providers.KeyInfo, error) {
	ks, err := p.refresh(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]providers.KeyInfo, 0, len(ks.versions))
	for _, v := range ks.versions {
		out = append(out, providers.KeyInfo{Version: v.v, KeyID: v.id, State: v.state, Created: v.created, Check: v.check})
	}
	slices.SortFunc(out, func(a, b providers.KeyInfo) int { return int(a.Version - b.Version) })
	return out, nil
}

// RetireBelow clears CKA_DECRYPT on every version below version, so that
// the token refuses to decrypt with them. It refuses to retire the current
// version.
func (p *Provider) RetireBelow(ctx context.Context, below int64) error {
	ks, err := p.refresh(ctx)
	if err != nil {
		return fmt.Errorf("retire pkcs11 key versions below %d: %w", below, err)
	}
	if below < 1 || below > ks.primary {
		return fmt.Errorf("retire pkcs11 key versions below %d: the current version is %d and must stay usable: %w", below, ks.primary, providers.ErrInvalidArgument)
	}
	for v, ver := range ks.versions {
		if v >= below || ver.state == providers.StateRetired {
			continue
		}
		err := p.withSession(ctx, "retire", func(sh p11.SessionHandle) error {
			return p.mod.ctx.SetAttributeValue(sh, ver.handle, []*p11.Attribute{p11.NewAttribute(p11.CKA_DECRYPT, false)})
		})
		if err != nil {
			return fmt.Errorf("retire %s: clear CKA_DECRYPT: %w", objectLabel(p.cfg.KeyLabel, v), err)
		}
	}
	if _, err := p.refresh(ctx); err != nil {
		return fmt.Errorf("retire pkcs11 key versions below %d: read the key again: %w", below, err)
	}
	return nil
}

// Token describes the token the provider uses.
func (p *Provider) Token() (TokenInfo, error) {
	p.connMu.RLock()
	defer p.connMu.RUnlock()
	if p.conn == nil {
		return TokenInfo{}, p.downError()
	}
	i := p.conn.info
	trim := func(s string) string { return strings.TrimRight(s, " \x00") }
	return TokenInfo{Label: trim(i.Label), Manufacturer: trim(i.ManufacturerID), Model: trim(i.Model), Serial: trim(i.SerialNumber), Slot: p.conn.slot}, nil
}

func (p *Provider) keyVersion() float64 {
	if ks := p.keys.Load(); ks != nil {
		return float64(ks.primary)
	}
	return 0
}

func (p *Provider) connected() float64 {
	if p.down.Load() || p.keys.Load() == nil {
		return 0
	}
	return 1
}
