package kms

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kms-plugin/kms-plugin/providers"
)

// Metrics holds the service's Prometheus collectors. Labels are bounded:
// method, operation, gRPC code and outcome, never error text. All methods
// accept a nil *Metrics and do nothing.
type Metrics struct {
	requests        *prometheus.CounterVec
	latency         *prometheus.HistogramVec
	providerLatency *prometheus.HistogramVec
	healthy         prometheus.Gauge
	degraded        prometheus.Gauge
	currentKey      *prometheus.GaugeVec
	currentKeyHash  *prometheus.GaugeVec
	keyCreated      prometheus.Gauge
	lastKeyID       string
	lastProbe       atomic.Int64 // Unix nanoseconds of the last probe; 0 before the first

	// The series of successful calls, resolved once: looking a series up
	// by label values hashes them on every call, which was half of what
	// the service added to a call's CPU time. Read-only after NewMetrics.
	okRequests   map[string]prometheus.Counter
	latencyOf    map[string]prometheus.Observer
	okProviderOf map[string]prometheus.Observer
}

// NewMetrics registers the service's collectors, with the Go runtime,
// process and build-info collectors, on reg.
func NewMetrics(reg prometheus.Registerer, provider string) *Metrics {
	buckets := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kms_plugin_requests_total",
			Help: "KMS v2 gRPC requests by method and gRPC code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kms_plugin_request_duration_seconds",
			Help:    "KMS v2 gRPC request latency by method.",
			Buckets: buckets,
		}, []string{"method"}),
		providerLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "kms_plugin_provider_duration_seconds",
			Help:        "Provider call latency by operation and outcome.",
			Buckets:     buckets,
			ConstLabels: prometheus.Labels{"provider": provider},
		}, []string{"operation", "outcome"}),
		healthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kms_plugin_healthy",
			Help: "1 when the last background provider probe succeeded.",
		}),
		degraded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kms_plugin_degraded",
			Help: "1 while the provider serves with a warning (such as a keyring that failed to reload).",
		}),
		currentKey: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kms_plugin_current_key_info",
			Help: "The key_id that Encrypt uses now (value is always 1).",
		}, []string{"key_id"}),
		currentKeyHash: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kms_plugin_current_key_id_hash_info",
			Help: "The hash of the key_id that Encrypt uses now, as kube-apiserver labels its apiserver_envelope_encryption_key_id_hash_* series (value is always 1).",
		}, []string{"key_id_hash"}),
		keyCreated: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kms_plugin_current_key_created_timestamp_seconds",
			Help: "Unix time at which the key version that Encrypt uses now was created; 0 when the backend does not say. The rotation-policy alert compares it with time().",
		}),
	}
	cacheAge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kms_plugin_status_cache_age_seconds",
		Help: "Seconds since the background probe whose verdict Status serves; -1 before the first probe.",
	}, func() float64 {
		at := m.lastProbe.Load()
		if at == 0 {
			return -1
		}
		return time.Since(time.Unix(0, at)).Seconds()
	})
	m.okRequests = map[string]prometheus.Counter{}
	m.latencyOf = map[string]prometheus.Observer{}
	for _, method := range []string{"Status", "Encrypt", "Decrypt"} {
		m.okRequests[method] = m.requests.WithLabelValues(method, codes.OK.String())
		m.latencyOf[method] = m.latency.WithLabelValues(method)
	}
	m.okProviderOf = map[string]prometheus.Observer{}
	for _, op := range []string{"encrypt", "decrypt", "check"} {
		m.okProviderOf[op] = m.providerLatency.WithLabelValues(op, providers.Outcome(nil))
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "kms_plugin_build_info",
		Help:        "Build information (value is always 1).",
		ConstLabels: prometheus.Labels{"version": Version, "go_version": runtime.Version(), "provider": provider},
	})
	buildInfo.Set(1)
	reg.MustRegister(m.requests, m.latency, m.providerLatency, m.healthy, m.degraded, m.currentKey, m.currentKeyHash, m.keyCreated, cacheAge, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeProvider records one provider call.
func (m *Metrics) observeProvider(op string, start time.Time, err error) {
	if m == nil {
		return
	}
	d := time.Since(start).Seconds()
	if o, ok := m.okProviderOf[op]; ok && err == nil {
		o.Observe(d)
		return
	}
	m.providerLatency.WithLabelValues(op, providers.Outcome(err)).Observe(d)
}

// setHealth records a probe's verdict and the current key. Only the health
// loop calls it, so lastKeyID needs no lock.
func (m *Metrics) setHealth(p Probe) {
	if m == nil {
		return
	}
	m.healthy.Set(boolGauge(p.Err == nil))
	m.degraded.Set(boolGauge(p.Warning != nil))
	if !p.At.IsZero() {
		m.lastProbe.Store(p.At.UnixNano())
	}
	if p.KeyID != "" && p.KeyID != m.lastKeyID {
		m.currentKey.Reset()
		m.currentKey.WithLabelValues(p.KeyID).Set(1)
		m.currentKeyHash.Reset()
		m.currentKeyHash.WithLabelValues(KeyIDHash(p.KeyID)).Set(1)
		m.lastKeyID = p.KeyID
	}
	if !p.KeyCreated.IsZero() {
		m.keyCreated.Set(float64(p.KeyCreated.Unix()))
	}
}

// KeyIDHash is key_id as kube-apiserver labels it in its
// apiserver_envelope_encryption_key_id_hash_* series: "sha256:" and the hex
// SHA-256 of the key_id. One PromQL join then shows whether every
// apiserver uses the plugin's current key (docs/operations.md).
func KeyIDHash(keyID string) string {
	if keyID == "" {
		return ""
	}
	return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(keyID)))
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// observeRequest records one gRPC request.
func (m *Metrics) observeRequest(method string, start time.Time, err error) {
	if m == nil {
		return
	}
	d := time.Since(start).Seconds()
	if c, ok := m.okRequests[method]; ok && err == nil {
		c.Inc()
	} else {
		m.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	}
	if o, ok := m.latencyOf[method]; ok {
		o.Observe(d)
	} else {
		m.latency.WithLabelValues(method).Observe(d)
	}
}

// unaryInterceptor records metrics, logs each call at debug level (never
// plaintext or ciphertext), makes sure no error leaves as codes.Unknown, and
// turns a panic into codes.Internal instead of a dead plugin.
func unaryInterceptor(log *slog.Logger, m *Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		start := time.Now()
		method := methodName(info.FullMethod)
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in handler", "method", method, "panic", r)
				resp, err = nil, status.Error(codes.Internal, method+": internal error")
			}
			if err != nil {
				err = toStatus(method, err)
			}
			m.observeRequest(method, start, err)
			logCall(ctx, log, method, req, resp, err, time.Since(start))
			clearRequest(req)
		}()
		return handler(ctx, req)
	}
}
