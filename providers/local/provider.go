// Package local is kms-plugin's on-node backend: a versioned keyring of
// AES-256-GCM key-encryption keys in a file that only the plugin's user can
// read. The running plugin reloads the file when it changes, so kmsctl can
// rotate keys without a restart; a file that fails to load never replaces
// the keyring in use.
package local

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-plugin/kms-plugin/providers"
)

const nonceSize = 12

// Provider serves a keyring file.
type Provider struct {
	path    string
	log     *slog.Logger
	ring    atomic.Pointer[loaded]
	reloads *prometheus.CounterVec

	mu          sync.Mutex // serialises reloads
	stamp       fileStamp
	reloadErr   atomic.Pointer[error]
	loadedAt    atomic.Pointer[time.Time]
	lastAttempt atomic.Pointer[time.Time]
	reloadEvery time.Duration

	stop chan struct{}
	done chan struct{}
}

// loaded is an immutable, parsed keyring with a ready AEAD per version.
type loaded struct {
	id      string
	primary providers.Key
	aeads   map[int64]cipher.AEAD // primary and active versions only
	states  map[int64]providers.KeyState
	checks  map[int64]string // check value of each version, to detect a changed key on reload
	ids     map[int64]string // key_id of each version
	infos   []providers.KeyInfo
}

var (
	_ providers.Provider  = (*Provider)(nil)
	_ providers.Rotator   = (*Provider)(nil)
	_ providers.KeyLister = (*Provider)(nil)
	_ providers.Retirer   = (*Provider)(nil)
	_ providers.Warner    = (*Provider)(nil)
	_ providers.Loader    = (*Provider)(nil)
)

// Open loads the keyring at path and, if reloadEvery > 0, watches it for
// changes. reg may be nil.
func Open(path string, reloadEvery time.Duration, log *slog.Logger, reg prometheus.Registerer) (*Provider, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Provider{
		path: path,
		log:  log,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kms_plugin_keyring_reloads_total",
			Help: "Keyring file reloads by result (ok, error).",
		}, []string{"result"}),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
		reloadEvery: reloadEvery,
	}
	// Both series exist from the start, at 0, so that a rate over them and
	// the dashboard's panel work before the first reload.
	p.reloads.WithLabelValues("ok")
	p.reloads.WithLabelValues("error")
	if reg != nil {
		if err := reg.Register(p.reloads); err != nil {
			return nil, fmt.Errorf("register keyring metrics: %w", err)
		}
	}
	k, stamp, err := load(path, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", providers.ErrNotConfigured, err)
	}
	l, err := prepare(k)
	if err != nil {
		return nil, fmt.Errorf("%w: keyring %s: %w", providers.ErrNotConfigured, path, err)
	}
	p.ring.Store(l)
	p.stamp = stamp
	now := time.Now()
	p.loadedAt.Store(&now)
	if reloadEvery > 0 {
		go p.watch(reloadEvery)
	} else {
		close(p.done)
	}
	return p, nil
}

// prepare builds the AEADs for a parsed keyring.
func prepare(k *Keyring) (*loaded, error) {
	l := &loaded{
		id:     k.ID,
		aeads:  make(map[int64]cipher.AEAD, len(k.Versions)),
		states: make(map[int64]providers.KeyState, len(k.Versions)),
		checks: make(map[int64]string, len(k.Versions)),
		ids:    make(map[int64]string, len(k.Versions)),
		infos:  k.Infos(),
	}
	for _, v := range k.Versions {
		l.states[v.Version] = v.State
		l.checks[v.Version] = v.Check
		l.ids[v.Version] = k.KeyID(v.Version)
		if v.State == providers.StateRetired || v.State == providers.StatePruned {
			continue
		}
		block, err := aes.NewCipher(v.Key)
		if err != nil {
			return nil, fmt.Errorf("version %d: %w", v.Version, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("version %d: %w", v.Version, err)
		}
		l.aeads[v.Version] = aead
	}
	for i := range k.Versions {
		clear(k.Versions[i].Key)
	}
	pv := k.Primary()
	l.primary = providers.Key{ID: k.KeyID(pv.Version), Ref: keyRef(pv.Version), Created: pv.Created}
	return l, nil
}

// Current returns the primary version's key.
func (p *Provider) Current() (providers.Key, error) { return p.ring.Load().primary, nil }

// Encrypt seals plaintext under key, which must be a decrypting version of
// this keyring: nonce (12 random bytes) || AES-256-GCM(plaintext, aad || 0 || key_id).
func (p *Provider) Encrypt(_ context.Context, key providers.Key, plaintext, aad []byte) ([]byte, error) {
	l := p.ring.Load()
	aead, err := l.aead(key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, nonceSize, nonceSize+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("generate nonce: %w", err)
	}
	return aead.Seal(out, out, plaintext, bindKeyID(aad, key.ID)), nil
}

// Decrypt opens a ciphertext made by Encrypt.
func (p *Provider) Decrypt(_ context.Context, key providers.Key, ciphertext, aad []byte) ([]byte, error) {
	l := p.ring.Load()
	aead, err := l.aead(key)
	if err != nil {
		return nil, err
	}
	if len(ciphertext) < nonceSize+aead.Overhead() {
		return nil, fmt.Errorf("ciphertext too short: %w", providers.ErrInvalidCiphertext)
	}
	pt, err := aead.Open(nil, ciphertext[:nonceSize], ciphertext[nonceSize:], bindKeyID(aad, key.ID))
	if err != nil {
		return nil, fmt.Errorf("key %s: authentication failed: %w", key.ID, providers.ErrInvalidCiphertext)
	}
	return pt, nil
}

// aead finds the cipher for key after checking that key.ID names this
// keyring, the version in key.Ref, and the very key bytes this keyring
// holds for it: a key_id made on a node whose keyring diverged (another
// key under the same version) is "key not found", not an authentication
// failure that would look like tampering.
func (l *loaded) aead(key providers.Key) (cipher.AEAD, error) {
	v, err := parseKeyRef(key.Ref)
	if err != nil {
		return nil, err
	}
	id, ok := parseKeyID(key.ID)
	switch {
	case !ok:
		return nil, fmt.Errorf("key_id %q is not a local keyring key_id: %w", key.ID, providers.ErrInvalidCiphertext)
	case id.ring != l.id:
		return nil, fmt.Errorf("key_id %q belongs to keyring %s, but this plugin serves keyring %s: %w", key.ID, id.ring, l.id, providers.ErrKeyNotFound)
	case id.v != v:
		return nil, fmt.Errorf("key_id %q does not match the ciphertext's key version %d: %w", key.ID, v, providers.ErrInvalidCiphertext)
	}
	state, ok := l.states[v]
	switch {
	case !ok:
		return nil, fmt.Errorf("key version %d is not in keyring %s: %w", v, l.id, providers.ErrKeyNotFound)
	case key.ID != l.ids[v]:
		return nil, fmt.Errorf("key_id %q names another key than version %d of this keyring (%s): the keyring files of the control-plane nodes differ; copy one file to every node (docs/keyring.md): %w", key.ID, v, l.ids[v], providers.ErrKeyNotFound)
	case state == providers.StatePruned:
		return nil, fmt.Errorf("key version %d was pruned; its key is gone: %w", v, providers.ErrKeyNotFound)
	case state == providers.StateRetired:
		return nil, fmt.Errorf("key version %d is retired: %w", v, providers.ErrKeyRetired)
	}
	return l.aeads[v], nil
}

// bindKeyID appends a separator and the key_id to the caller's associated
// data.
func bindKeyID(aad []byte, keyID string) []byte {
	out := make([]byte, 0, len(aad)+1+len(keyID))
	out = append(out, aad...)
	out = append(out, 0)
	return append(out, keyID...)
}

// Check reports whether the keyring in memory can seal and open: a cheap
// self-test with the primary key. The file's reload state is a Warning,
// not a health failure, because the last good keyring keeps serving.
func (p *Provider) Check(ctx context.Context) error {
	key, _ := p.Current()
	probe := []byte("kms-plugin health probe")
	aad := []byte("health")
	ct, err := p.Encrypt(ctx, key, probe, aad)
	if err != nil {
		return fmt.Errorf("self-test encrypt: %w", err)
	}
	if _, err := p.Decrypt(ctx, key, ct, aad); err != nil {
		return fmt.Errorf("self-test decrypt: %w", err)
	}
	return nil
}

// Warning returns the last reload error while the file on disk cannot be
// loaded, nil once it loads again.
func (p *Provider) Warning() error {
	if e := p.reloadErr.Load(); e != nil {
		return *e
	}
	return nil
}

// LoadState reports when the keyring was last loaded and how the last
// reload went.
func (p *Provider) LoadState() providers.LoadState {
	st := providers.LoadState{LastError: p.Warning(), ReloadInterval: p.reloadEvery}
	if t := p.loadedAt.Load(); t != nil {
		st.LoadedAt = *t
	}
	if t := p.lastAttempt.Load(); t != nil {
		st.LastAttempt = *t
	}
	return st
}

// Close stops watching the file.
func (p *Provider) Close() error {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
	return nil
}

func (p *Provider) watch(every time.Duration) {
	defer close(p.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			_ = p.Reload()
		}
	}
}

// Reload loads the file if it changed since the last load. A file that
// fails to load or would lose keys still in use is refused: the keyring in
// memory keeps serving, and Warning reports why until a good file appears.
func (p *Provider) Reload() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	p.lastAttempt.Store(&now)
	if fi, err := os.Stat(p.path); err == nil && stampOf(fi) == p.stamp && p.reloadErr.Load() == nil {
		return nil
	}
	err := p.reloadLocked()
	if err != nil {
		p.reloads.WithLabelValues("error").Inc()
		if prev := p.reloadErr.Load(); prev == nil || (*prev).Error() != err.Error() {
			p.log.Error("keyring reload failed; still serving the last good keyring", "path", p.path, "err", err)
		}
		p.reloadErr.Store(&err)
		return err
	}
	return nil
}

func (p *Provider) reloadLocked() error {
	k, stamp, err := load(p.path, false)
	if err != nil {
		return err
	}
	next, err := prepare(k)
	if err != nil {
		return fmt.Errorf("keyring %s: %w", p.path, err)
	}
	cur := p.ring.Load()
	if err := compatible(cur, next); err != nil {
		return fmt.Errorf("keyring %s refused: %w", p.path, err)
	}
	p.ring.Store(next)
	p.stamp = stamp
	p.reloadErr.Store(nil)
	now := time.Now()
	p.loadedAt.Store(&now)
	p.reloads.WithLabelValues("ok").Inc()
	if cur.primary.ID != next.primary.ID {
		p.log.Info("keyring reloaded; new primary key", "key_id", next.primary.ID)
	} else {
		p.log.Info("keyring reloaded", "key_id", next.primary.ID)
	}
	return nil
}

// compatible refuses a reload that would make data unreadable: another
// keyring, a version that vanished while still decrypting, or a version
// whose key or key_id changed. A version may go from any state to pruned
// in one reload (retire then prune between two reloads): pruning is
// deliberate, and kmsctl prunes only retired versions.
func compatible(cur, next *loaded) error {
	if cur.id != next.id {
		return fmt.Errorf("it is a different keyring (id %s, serving %s); restart the plugin to switch keyrings deliberately", next.id, cur.id)
	}
	for v, check := range cur.checks {
		nc, ok := next.checks[v]
		switch {
		case !ok && cur.states[v] != providers.StateRetired && cur.states[v] != providers.StatePruned:
			return fmt.Errorf("version %d was removed while it can still decrypt; retire it first", v)
		case ok && nc != check:
			return fmt.Errorf("version %d has a different key than before (check %s, was %s)", v, nc, check)
		case ok && next.ids[v] != cur.ids[v]:
			return fmt.Errorf("version %d would change key_id from %s to %s", v, cur.ids[v], next.ids[v])
		}
	}
	return nil
}

// Rotate adds a version to the file, makes it primary and reloads.
func (p *Provider) Rotate(context.Context) (providers.Key, error) {
	k, err := Update(p.path, func(k *Keyring) error { _, err := k.Rotate(time.Now()); return err })
	if err != nil {
		return providers.Key{}, err
	}
	if err := p.Reload(); err != nil {
		return providers.Key{}, err
	}
	pv := k.Primary().Version
	return providers.Key{ID: k.KeyID(pv), Ref: keyRef(pv)}, nil
}

// Keys lists the keyring's versions.
func (p *Provider) Keys(context.Context) ([]providers.KeyInfo, error) {
	return append([]providers.KeyInfo(nil), p.ring.Load().infos...), nil
}

// RetireBelow retires every version lower than version in the file and
// reloads. It refuses to retire the primary.
func (p *Provider) RetireBelow(_ context.Context, version int64) error {
	_, err := Update(p.path, func(k *Keyring) error {
		if pv := k.Primary().Version; version > pv {
			return fmt.Errorf("retire below %d would retire the primary version %d: %w", version, pv, providers.ErrInvalidArgument)
		}
		for _, v := range k.Versions {
			if v.Version < version && v.State != providers.StateRetired {
				if err := k.Retire(v.Version); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return p.Reload()
}
