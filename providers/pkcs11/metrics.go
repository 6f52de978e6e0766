package pkcs11

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-plugin/kms-plugin/providers"
)

// metrics are the PKCS#11 provider's own series. Labels are bounded: an
// operation name, an outcome class, a result.
type metrics struct {
	calls      *prometheus.HistogramVec
	reconnects *prometheus.CounterVec
}

// newMetrics registers the provider's series on reg (nil in tests and
// kmsctl). keyVersion and connected are read at scrape time.
func newMetrics(reg prometheus.Registerer, keyVersion, connected func() float64) (*metrics, error) {
	m := &metrics{
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "kms_plugin",
			Subsystem: "pkcs11",
			Name:      "call_duration_seconds",
			Help:      "Latency of PKCS#11 operations (encrypt, decrypt, scan, generate, retire) by outcome, session wait included.",
			Buckets:   []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"operation", "outcome"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kms_plugin",
			Subsystem: "pkcs11",
			Name:      "reconnects_total",
			Help:      "Attempts to open sessions and log in to the token again after losing it, by result.",
		}, []string{"result"}),
	}
	m.reconnects.WithLabelValues("ok")
	m.reconnects.WithLabelValues("error")
	if reg == nil {
		return m, nil
	}
	var are prometheus.AlreadyRegisteredError
	if err := reg.Register(m.calls); errors.As(err, &are) {
		m.calls = are.ExistingCollector.(*prometheus.HistogramVec)
	} else if err != nil {
		return nil, err
	}
	if err := reg.Register(m.reconnects); errors.As(err, &are) {
		m.reconnects = are.ExistingCollector.(*prometheus.CounterVec)
	} else if err != nil {
		return nil, err
	}
	gauges := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "kms_plugin", Subsystem: "pkcs11", Name: "key_version",
			Help: "Version of the key that Encrypt uses; 0 before the token was first read.",
		}, keyVersion),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "kms_plugin", Subsystem: "pkcs11", Name: "connected",
			Help: "1 while the provider holds logged-in sessions on the token, 0 while it reconnects.",
		}, connected),
	}
	for _, g := range gauges {
		if err := reg.Register(g); err != nil && !errors.As(err, &are) {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observe(op string, err error, d time.Duration) {
	m.calls.WithLabelValues(op, providers.Outcome(err)).Observe(d.Seconds())
}

func (m *metrics) reconnect(err error) {
	if err != nil {
		m.reconnects.WithLabelValues("error").Inc()
		return
	}
	m.reconnects.WithLabelValues("ok").Inc()
}
