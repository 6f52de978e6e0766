package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/providers/local/localtest"
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

// inFlightRecorder is a no-op server that notes any input that arrives
// while an identical one is still being served.
type inFlightRecorder struct {
	NoopServer
	mu       sync.Mutex
	inFlight map[string]int
	shared   int
	seen     map[string]bool
}

func (r *inFlightRecorder) hold(in []byte) func() {
	r.mu.Lock()
	k := string(in)
	if r.inFlight[k] > 0 {
		r.shared++
	}
	r.inFlight[k]++
	r.seen[k] = true
	r.mu.Unlock()
	time.Sleep(time.Millisecond) // long enough for the callers to overlap
	return func() { r.mu.Lock(); r.inFlight[k]--; r.mu.Unlock() }
}

func (r *inFlightRecorder) Encrypt(ctx context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	defer r.hold(req.Plaintext)()
	return r.NoopServer.Encrypt(ctx, req)
}

func (r *inFlightRecorder) Decrypt(ctx context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	defer r.hold(req.Ciphertext)()
	return r.NoopServer.Decrypt(ctx, req)
}

func TestCallsInFlightCarryDistinctInputs(t *testing.T) {
	for _, op := range []Op{OpEncrypt, OpDecrypt} {
		rec := &inFlightRecorder{inFlight: map[string]int{}, seen: map[string]bool{}}
		o := opts(op)
		o.Concurrency = 16
		r, err := Run(context.Background(), serve(t, rec), o)
		if err != nil || r.Errors > 0 {
			t.Fatalf("Run(%s) = %+v, %v", op, r, err)
		}
		if rec.shared > 0 {
			t.Errorf("%s: %d calls arrived while an identical one was in flight; a coalescing plugin would skip them", op, rec.shared)
		}
		if len(rec.seen) < 16 {
			t.Errorf("%s: only %d distinct inputs for 16 callers", op, len(rec.seen))
		}
	}
}

func TestRunReportsTheServersCPU(t *testing.T) {
	o := opts(OpEncrypt)
	o.PID = os.Getpid() // the server runs in this process
	r, err := Run(context.Background(), serve(t, NoopServer{}), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.CPUMsPer1000 <= 0 {
		t.Errorf("CPU per 1000 calls = %v, want the process's CPU time", r.CPUMsPer1000)
	}
	o.PID = 1 << 30 // no such process
	if _, err := Run(context.Background(), serve(t, NoopServer{}), o); err == nil {
		t.Error("Run sampled a process that does not exist")
	}
}

func TestSampleProcRefusesGarbage(t *testing.T) {
	if _, err := SampleProc(-1); err == nil {
		t.Error("SampleProc(-1) succeeded")
	}
	s, err := SampleProc(os.Getpid())
	if err != nil || s.RSSKB <= 0 || s.PeakKB < s.RSSKB {
		t.Errorf("SampleProc(self) = %+v, %v", s, err)
	}
}

func TestTransitFloorIsOneRawTransitCall(t *testing.T) {
	var calls atomic.Int64
	var token atomic.Value
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		token.Store(r.Header.Get("X-Vault-Token"))
		var in map[string]string
		_ = json.NewDecoder(r.Body).Decode(&in)
		switch r.URL.Path {
		case "/v1/transit/encrypt/kms":
			fmt.Fprintf(w, `{"data":{"ciphertext":"vault:v1:%s"}}`, in["plaintext"])
		case "/v1/transit/decrypt/kms":
			fmt.Fprintf(w, `{"data":{"plaintext":%q}}`, strings.TrimPrefix(in["ciphertext"], "vault:v1:"))
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(vault.Close)
	f, err := NewTransitFloor(nil, vault.URL, "transit", "kms", "hvs.floor")
	if err != nil {
		t.Fatal(err)
	}
	client := serve(t, f)
	for _, op := range []Op{OpRoundTrip, OpDecrypt} {
		r, err := Run(context.Background(), client, opts(op))
		if err != nil || r.Errors > 0 || r.Ops == 0 {
			t.Fatalf("Run(%s) through the floor = %+v, %v", op, r, err)
		}
	}
	if token.Load() != "hvs.floor" {
		t.Errorf("token %q", token.Load())
	}
	before := calls.Load()
	if _, err := client.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load() - before; n != 1 {
		t.Errorf("one Encrypt made %d transit calls", n)
	}
	if _, err := NewTransitFloor(nil, "vault:8200", "transit", "kms", "t"); err == nil {
		t.Error("NewTransitFloor accepted an address that is not a URL")
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
	p, _ := localtest.Open(b, nil)
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
