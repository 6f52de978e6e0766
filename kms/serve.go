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

	var httpSrv *http.Server
	if cfg.HealthAddr != "" {
		hl, err := net.Listen("tcp", cfg.HealthAddr)
		if err != nil {
			return fmt.Errorf("listen for health on %s: %w", cfg.HealthAddr, err)
		}
		httpSrv = &http.Server{Handler: HTTPHandler(health, reg), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := httpSrv.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("health server stopped", "err", err)
			}
		}()
		log.Info("serving health and metrics", "addr", hl.Addr().String())
	}

	l, err := Listen(cfg.Endpoint, cfg.Socket)
	if err != nil {
		shutdownHTTP(httpSrv)
		return err
	}
	srv := NewGRPCServer(NewServer(provider, health, log, metrics))

	hctx, stopHealth := context.WithCancel(ctx)
	defer stopHealth()
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
	shutdownHTTP(httpSrv)
	return err
}

// NewGRPCServer returns a gRPC server that serves s with the service's
// interceptor (metrics, call logs, code mapping, panic recovery).
func NewGRPCServer(s *Server) *grpc.Server {
	srv := grpc.NewServer(
		grpc.UnaryInterceptor(unaryInterceptor(s.log, s.metrics)),
		grpc.ForceServerCodecV2(newZeroingCodec()),
	)
	kmsapi.RegisterKeyManagementServiceServer(srv, s)
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
