package kms

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"

	adminv1 "github.com/kms-plugin/kms-plugin/proto/kmsplugin/admin/v1"
	"github.com/kms-plugin/kms-plugin/providers"
)

// Config is what Serve needs besides the provider.
type Config struct {
	Endpoint        Endpoint
	Socket          SocketOptions
	HealthAddr      string        // "" disables the HTTP endpoints
	HealthInterval  time.Duration // how often the background probe runs
	HealthTimeout   time.Duration // how long one probe may take
	ShutdownTimeout time.Duration // how long in-flight calls may take on shutdown
	ProviderName    string
}

// Serve runs the KMS v2 service for provider until ctx ends, then stops
// accepting, lets in-flight calls finish (up to ShutdownTimeout), and
// removes the socket. The service's metrics join reg, which /metrics
// serves. ready, if not nil, is called once the socket accepts.
func Serve(ctx context.Context, cfg Config, provider providers.Provider, log *slog.Logger, reg *prometheus.Registry, ready func()) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	metrics := NewMetrics(reg, cfg.ProviderName)
	health := NewHealth(provider, cfg.HealthInterval, cfg.HealthTimeout, log, metrics)
	// One probe before serving, so that the first Status already knows.
	health.ProbeNow(ctx)

	// The health address is tried once before the socket so that the log
	// names it first, but failing to bind it never keeps KMS down: a
	// squatted port is retried in the background while the socket serves.
	hctx, stopHealth := context.WithCancel(ctx)
	defer stopHealth()
	var httpSrv *http.Server
	if cfg.HealthAddr != "" {
		httpSrv = &http.Server{Handler: HTTPHandler(health, reg), ReadHeaderTimeout: 5 * time.Second}
		if !serveHTTP(httpSrv, cfg.HealthAddr, log, true) {
			go retryHTTP(hctx, httpSrv, cfg.HealthAddr, log)
		}
	}

	l, err := Listen(cfg.Endpoint, cfg.Socket)
	if err != nil {
		stopHealth()
		shutdownHTTP(httpSrv)
		return err
	}
	srv := NewGRPCServer(NewServer(provider, health, log, metrics), NewAdmin(provider, cfg.ProviderName))

	go health.Run(hctx)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	log.Info("serving KMS v2", "endpoint", cfg.Endpoint.String(), "provider", cfg.ProviderName, "version", Version)
	if ready != nil {
		ready()
	}

	select {
	case err = <-errc:
		err = fmt.Errorf("grpc server: %w", err)
	case <-ctx.Done():
		log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
		gracefulStop(srv, cfg.ShutdownTimeout)
		err = nil
	}
	_ = l.Close()
	stopHealth()
	shutdownHTTP(httpSrv)
	return err
}

// healthRetryInterval is how often a health address that could not be
// bound is tried again.
var healthRetryInterval = 2 * time.Second

// serveHTTP binds addr and serves s on it in the background. It reports
// whether the address was bound; the first failure logs at error level
// (loud tells the operator a port is squatted), later ones at debug.
func serveHTTP(s *http.Server, addr string, log *slog.Logger, first bool) bool {
	hl, err := net.Listen("tcp", addr)
	if err != nil {
		if first {
			log.Error("cannot serve health and metrics yet; KMS serves regardless and the address is retried", "addr", addr, "retry_every", healthRetryInterval, "err", err)
		} else {
			log.Debug("health address still unavailable", "addr", addr, "err", err)
		}
		return false
	}
	go func() {
		if err := s.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server stopped", "err", err)
		}
	}()
	log.Info("serving health and metrics", "addr", hl.Addr().String())
	return true
}

// retryHTTP tries serveHTTP until it binds or ctx ends.
func retryHTTP(ctx context.Context, s *http.Server, addr string, log *slog.Logger) {
	t := time.NewTicker(healthRetryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if serveHTTP(s, addr, log, false) {
				return
			}
		}
	}
}

// Bounds on what a client can make the server hold. The largest valid
// request is a Decrypt: a 1 KiB ciphertext, a 1 KiB key_id and 32 KiB of
// annotations; 128 KiB leaves room for a future field while refusing the
// megabytes that no KMS v2 caller sends. kube-apiserver multiplexes calls
// on one connection; 1024 streams is far above its concurrency and below
// what would let one client exhaust memory.
const (
	maxRequestBytes      = 128 << 10
	maxConcurrentStreams = 1024
)

// NewGRPCServer returns a gRPC server that serves s, and admin unless it is
// nil, with the service's interceptor (metrics, call logs, code mapping,
// panic recovery).
func NewGRPCServer(s *Server, admin *Admin) *grpc.Server {
	srv := grpc.NewServer(
		grpc.UnaryInterceptor(unaryInterceptor(s.log, s.metrics)),
		grpc.ForceServerCodecV2(newZeroingCodec()),
		grpc.MaxRecvMsgSize(maxRequestBytes),
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
	)
	kmsapi.RegisterKeyManagementServiceServer(srv, s)
	if admin != nil {
		adminv1.RegisterAdminServer(srv, admin)
	}
	return srv
}

// gracefulStop stops accepting and waits for in-flight calls, then cuts
// them off after timeout.
func gracefulStop(srv *grpc.Server, timeout time.Duration) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		srv.Stop()
		<-done
	}
}

func shutdownHTTP(s *http.Server) {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.Shutdown(ctx)
}
