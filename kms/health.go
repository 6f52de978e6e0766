package kms

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
)

// Probe is the outcome of one background health check.
type Probe struct {
	// Err is the provider's Check error; nil when healthy.
	Err error
	// Warning is set while the provider serves but needs attention (see
	// providers.Warner).
	Warning error
	// KeyID is the current key_id when the probe ran ("" if unknown).
	KeyID string
	// KeyCreated is when that key version was made; zero if unknown.
	KeyCreated time.Time
	// At is when the probe finished; zero before the first probe.
	At time.Time
}

// Health runs the provider's Check in the background and caches the
// result, so that Status and /readyz never call the backend themselves.
type Health struct {
	provider providers.Provider
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger
	metrics  *Metrics
	last     atomic.Pointer[Probe]
}

// NewHealth returns a Health that probes provider every interval, giving
// each probe at most timeout. metrics may be nil.
func NewHealth(provider providers.Provider, interval, timeout time.Duration, log *slog.Logger, metrics *Metrics) *Health {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Health{provider: provider, interval: interval, timeout: timeout, log: log, metrics: metrics}
	h.last.Store(&Probe{Err: errors.New("not probed yet")})
	return h
}

// Last returns the most recent probe.
func (h *Health) Last() Probe { return *h.last.Load() }

// Run probes once at once, then every interval until ctx ends. While
// unhealthy it probes more often, so recovery shows within seconds.
func (h *Health) Run(ctx context.Context) {
	for {
		p := h.ProbeNow(ctx)
		wait := h.interval
		if p.Err != nil {
			wait = min(wait, time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// ProbeNow runs one probe, stores and returns it.
func (h *Health) ProbeNow(ctx context.Context) Probe {
	cctx, cancel := context.WithTimeout(ctx, h.timeout)
	start := time.Now()
	err := h.provider.Check(cctx)
	cancel()
	h.metrics.observeProvider("check", start, err)
	p := Probe{Err: err, At: time.Now()}
	if w, ok := h.provider.(providers.Warner); ok {
		p.Warning = w.Warning()
	}
	if key, kerr := h.provider.Current(); kerr == nil {
		p.KeyID, p.KeyCreated = key.ID, key.Created
	} else if p.Err == nil {
		p.Err = kerr
	}
	prev := h.last.Swap(&p)
	h.report(*prev, p)
	return p
}

// report logs changes of state and updates the health metrics.
func (h *Health) report(prev, p Probe) {
	h.metrics.setHealth(p)
	switch {
	case p.Err != nil && (prev.Err == nil || prev.Err.Error() != p.Err.Error()):
		h.log.Warn("provider unhealthy", "revoked", providers.IsRevocation(p.Err), "err", p.Err)
	case p.Err == nil && prev.Err != nil:
		h.log.Info("provider healthy", "key_id", p.KeyID)
	}
	if p.Warning != nil && (prev.Warning == nil || prev.Warning.Error() != p.Warning.Error()) {
		h.log.Warn("provider degraded", "warning", p.Warning)
	}
	if p.KeyID != "" && p.KeyID != prev.KeyID {
		h.log.Info("current key", "key_id", p.KeyID)
	}
}
