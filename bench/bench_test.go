package bench

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/providers/local"
)

func serve(t *testing.T, srv kmsapi.KeyManagementServiceServer) kmsapi.KeyManagementServiceClient {
	t.Helper()
	gs := grpc.NewServer()
	kmsapi.RegisterKeyManagementServiceServer(gs, srv)
	return serveGRPC(t, gs)
}

func opts(op Op) Options {
	return Options{Op: op, Concurrency: 4, Duration: 200 * time.Millisecond, PlaintextSize: 32, Timeout: time.Second}
}

func TestRunCountsCallsAndLatencies(t *testing.T) {
	client := serve(t, NoopServer{})
	for _, op := range []Op{OpEncrypt, OpDecrypt, OpStatus, OpRoundTrip} {
		r, err := Run(context.Background(), client, opts(op))
		if err != nil {
			t.Fatalf("Run(%s) = %v", op, err)
		}
		if r.Ops == 0 || r.Errors != 0 || r.OpsPerSec <= 0 {
			t.Errorf("Run(%s) = %+v, want calls and no errors", op, r)
		}
		if !(r.P50 > 0 && r.P50 <= r.P90 && r.P90 <= r.P99 && r.P99 <= r.Max) {
			t.Errorf("Run(%s) quantiles out of order: %v %v %v %v", op, r.P50, r.P90, r.P99, r.Max)
		}
	}
}

// failingServer fails Encrypt and returns wrong plaintext from Decrypt.
type failingServer struct{ NoopServer }

func (failingServer) Encrypt(context.Context, *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	return nil, status.Error(codes.Unavailable, "backend down")
}

func (failingServer) Decrypt(context.Context, *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	return &kmsapi.DecryptResponse{Plaintext: []byte("wrong")}, nil
}

func TestRunReportsErrors(t *testing.T) {
	client := serve(t, failingServer{})
	r, err := Run(context.Background(), client, opts(OpEncrypt))
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops == 0 || r.Errors != r.Ops || !strings.Contains(r.FirstError, "backend down") || r.OpsPerSec != 0 {
		t.Errorf("Run against a failing Encrypt = %+v, want every call an error and the first error's text", r)
	}
	if _, err := Run(context.Background(), client, opts(OpDecrypt)); err == nil {
		t.Errorf("Run(decrypt) with a failing Encrypt succeeded; it needs a ciphertext first")
	}

	wrong := serve(t, wrongDecrypt{})
	r, err = Run(context.Background(), wrong, opts(OpRoundTrip))
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors != r.Ops || !strings.Contains(r.FirstError, "wrong plaintext") {
		t.Errorf("Run(roundtrip) with wrong plaintext = %+v, want errors", r)
	}
}

type wrongDecrypt struct{ NoopServer }

func (wrongDecrypt) Decrypt(context.Context, *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	return &kmsapi.DecryptResponse{Plaintext: []byte("wrong")}, nil
}

func TestOptionsValidate(t *testing.T) {
	good := opts(OpStatus)
	bad := map[string]func(*Options){
		"no workers":      func(o *Options) { o.Concurrency = 0 },
		"no duration":     func(o *Options) { o.Duration = 0 },
		"negative warmup": func(o *Options) { o.Warmup = -1 },
		"huge plaintext":  func(o *Options) { o.PlaintextSize = 2000 },
		"no timeout":      func(o *Options) { o.Timeout = 0 },
		"unknown op":      func(o *Options) { o.Op = "delete" },
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(good) = %v", err)
	}
	for name, mutate := range bad {
		o := good
		mutate(&o)
		if err := o.Validate(); err == nil {
			t.Errorf("%s: Validate() = nil, want an error", name)
		}
	}
}

func TestCompareComputesRatiosPerRound(t *testing.T) {
	var order []string
	target := func(ops float64, p50 time.Duration) func() (Result, error) {
		return func() (Result, error) {
			order = append(order, "t")
			return Result{OpsPerSec: ops, P50: p50, P90: p50, P99: p50, Max: p50}, nil
		}
	}
	tOps := []float64{90, 80, 100}
	i := 0
	tgt := func() (Result, error) { r, err := target(tOps[i], 2*time.Millisecond)(); i++; return r, err }
	base := func() (Result, error) {
		order = append(order, "b")
		return Result{OpsPerSec: 100, P50: time.Millisecond, P90: time.Millisecond, P99: time.Millisecond, Max: time.Millisecond}, nil
	}
	c, err := Compare(3, tgt, base)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(order, ""); got != "bttbbt" {
		t.Errorf("round order = %q, want baseline and target alternating first (bttbbt)", got)
	}
	if r := c.Ratios["ops_per_sec"]; r.Median != 0.9 || r.Min != 0.8 || r.Max != 1.0 {
		t.Errorf("ops_per_sec ratio = %+v, want median 0.9 [0.8, 1.0]", r)
	}
	if r := c.Ratios["p50"]; r.Median != 2 {
		t.Errorf("p50 ratio = %+v, want 2", r)
	}
	if _, err := Compare(0, tgt, base); err == nil {
		t.Errorf("Compare(0 rounds) succeeded")
	}
	failing := func() (Result, error) { return Result{}, errors.New("boom") }
	if _, err := Compare(1, tgt, failing); err == nil || !strings.Contains(err.Error(), "baseline") {
		t.Errorf("Compare with a failing baseline = %v", err)
	}
}

// BenchmarkSocketRoundTrip compares an Encrypt+Decrypt round trip over a
// unix socket: "floor" is the no-op server, "local" is kms-plugin's service
// over the local keyring. Read the two ns/op figures of one run as a ratio.
func BenchmarkSocketRoundTrip(b *testing.B) {
	for _, c := range []struct {
		name string
		srv  func(b *testing.B) *grpc.Server
	}{
		{"floor", func(*testing.B) *grpc.Server {
			gs := grpc.NewServer()
			kmsapi.RegisterKeyManagementServiceServer(gs, NoopServer{})
			return gs
		}},
		{"local", localServer},
	} {
		b.Run(c.name, func(b *testing.B) {
			client := serveGRPC(b, c.srv(b))
			ctx := context.Background()
			seed := make([]byte, 32)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					enc, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed})
					if err != nil {
						b.Error(err)
						return
					}
					if _, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func localServer(b *testing.B) *grpc.Server {
	path := filepath.Join(b.TempDir(), "keyring.json")
	k, err := local.New(time.Now())
	if err != nil {
		b.Fatal(err)
	}
	if err := local.Create(path, k); err != nil {
		b.Fatal(err)
	}
	p, err := local.Open(path, 0, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.Close() })
	// As kms.Serve wires it: metrics on a registry, an info-level logger.
	m := kms.NewMetrics(prometheus.NewRegistry(), "local")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := kms.NewHealth(p, time.Hour, time.Second, log, m)
	h.ProbeNow(context.Background())
	return kms.NewGRPCServer(kms.NewServer(p, h, log, m), nil)
}

func serveGRPC(b testing.TB, gs *grpc.Server) kmsapi.KeyManagementServiceClient {
	ep := kms.Endpoint{Address: filepath.Join(b.TempDir(), "kms.sock")}
	l, err := kms.Listen(ep, kms.SocketOptions{})
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
	b.Cleanup(gs.Stop)
	client, conn, err := kms.Dial(ep.String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	return client
}
