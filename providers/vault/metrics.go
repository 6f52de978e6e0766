package vault

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-plugin/kms-plugin/providers"
)

// metrics are the Vault provider's own series. Labels are bounded: an
// operation name, an outcome class, an auth method, a result.
type metrics struct {
	requests *prometheus.HistogramVec
	// okObs are the series of successful encrypts and decrypts, resolved
	// once: a label lookup hashes the values on every call.
	okObs    map[op]prometheus.Observer
	logins   *prometheus.CounterVec
	renewals *prometheus.CounterVec
}

// newMetrics registers the provider's series on reg (which may be nil, as
// in tests). tokenTTL and keyVersion are read at scrape time.
func newMetrics(reg prometheus.Registerer, tokenTTL func() float64, keyVersion func() float64) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "kms_plugin",
			Subsystem: "vault",
			Name:      "request_duration_seconds",
			Help:      "Latency of Vault requests by operation and outcome (one observation per HTTP attempt).",
			Buckets:   []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"operation", "outcome"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kms_plugin",
			Subsystem: "vault",
			Name:      "logins_total",
			Help:      "Vault logins (and token reloads for token auth) by auth method and result.",
		}, []string{"auth", "result"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kms_plugin",
			Subsystem: "vault",
			Name:      "token_renewals_total",
			Help:      "Vault token renewals by result.",
		}, []string{"result"}),
	}
	defer m.resolve()
	if reg == nil {
		return m, nil
	}
	// A second provider on the same registry (kmsctl, tests) shares the
	// counters already there.
	var are prometheus.AlreadyRegisteredError
	if err := reg.Register(m.requests); errors.As(err, &are) {
		m.requests = are.ExistingCollector.(*prometheus.HistogramVec)
	} else if err != nil {
		return nil, err
	}
	if err := reg.Register(m.logins); errors.As(err, &are) {
		m.logins = are.ExistingCollector.(*prometheus.CounterVec)
	} else if err != nil {
		return nil, err
	}
	if err := reg.Register(m.renewals); errors.As(err, &are) {
		m.renewals = are.ExistingCollector.(*prometheus.CounterVec)
	} else if err != nil {
		return nil, err
	}
	gauges := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "kms_plugin",
			Subsystem: "vault",
			Name:      "token_ttl_seconds",
			Help:      "Remaining lifetime of the Vault token in use; -1 for a token that never expires or none yet.",
		}, tokenTTL),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "kms_plugin",
			Subsystem: "vault",
			Name:      "key_version",
			Help:      "Latest version of the transit key, which Encrypt uses; 0 before the first metadata read.",
		}, keyVersion),
	}
	for _, g := range gauges {
		if err := reg.Register(g); err != nil && !errors.As(err, &are) {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) resolve() {
	m.okObs = map[op]prometheus.Observer{}
	for _, o := range []op{opEncrypt, opDecrypt} {
		m.okObs[o] = m.requests.WithLabelValues(string(o), "ok")
	}
	// Renewal series exist from the start, at 0, so that an alert on
	// failed renewals and the dashboard work before the first renewal.
	m.renewals.WithLabelValues(result(nil))
	m.renewals.WithLabelValues(result(errors.New("")))
}

func (m *metrics) observe(o op, err error, d time.Duration) {
	if obs, ok := m.okObs[o]; ok && err == nil {
		obs.Observe(d.Seconds())
		return
	}
	m.requests.WithLabelValues(string(o), providers.Outcome(err)).Observe(d.Seconds())
}

func (m *metrics) login(auth string, err error) {
	m.logins.WithLabelValues(auth, result(err)).Inc()
}

func (m *metrics) renewal(err error) {
	m.renewals.WithLabelValues(result(err)).Inc()
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
