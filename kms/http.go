package kms

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HTTPHandler serves the plugin's operational endpoints:
//
//	/livez    200 while the process serves; never depends on the backend.
//	/readyz   200 when the last background probe succeeded.
//	/healthz  200 when the last probe succeeded and nothing needs attention
//	          (a keyring that failed to reload makes it 503, with the reason).
//	/metrics  Prometheus metrics from gatherer.
//
// None of them calls the backend: they read the cached probe.
func HTTPHandler(h *Health, gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		p := h.Last()
		switch {
		case p.Err != nil:
			writeText(w, http.StatusServiceUnavailable, "not ready: "+p.Err.Error())
		case p.Warning != nil:
			writeText(w, http.StatusOK, "ok (warning: "+p.Warning.Error()+")")
		default:
			writeText(w, http.StatusOK, "ok")
		}
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		p := h.Last()
		switch {
		case p.Err != nil:
			writeText(w, http.StatusServiceUnavailable, "unhealthy: "+p.Err.Error())
		case p.Warning != nil:
			writeText(w, http.StatusServiceUnavailable, "degraded: "+p.Warning.Error())
		default:
			writeText(w, http.StatusOK, "ok")
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	return mux
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, body)
}
