package kms

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/providers"
)

// TestServeFinishesInFlightCallsOnShutdown cancels Serve's context while an
// Encrypt is in the provider and checks that the call still succeeds, that
// Serve returns, and that the socket is gone.
func TestServeFinishesInFlightCallsOnShutdown(t *testing.T) {
	f := okFake()
	entered := make(chan struct{})
	release := make(chan struct{})
	inner := f.encrypt
	f.encrypt = func(ctx context.Context, k providers.Key, pt, aad []byte) ([]byte, error) {
		close(entered)
		<-release
		return inner(ctx, k, pt, aad)
	}
	sock := filepath.Join(t.TempDir(), "kms.sock")
	cfg := Config{
		Endpoint:        Endpoint{Address: sock},
		HealthInterval:  time.Hour,
		HealthTimeout:   time.Second,
		ShutdownTimeout: 10 * time.Second,
		ProviderName:    "fake",
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, cfg, f, nil, prometheus.NewRegistry(), func() { close(ready) }) }()
	<-ready

	client, conn, err := Dial("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type reply struct {
		resp *kmsapi.EncryptResponse
		err  error
	}
	got := make(chan reply, 1)
	go func() {
		resp, err := client.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: []byte("in flight")})
		got <- reply{resp, err}
	}()
	<-entered
	cancel() // SIGTERM
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-served:
		t.Fatalf("Serve returned (%v) while a call was in flight", err)
	default:
	}
	close(release)
	r := <-got
	if r.err != nil || !bytes.HasSuffix(r.resp.GetCiphertext(), []byte("in flight")) {
		t.Errorf("in-flight Encrypt during shutdown = %v, %v; want success", r.resp, r.err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve() = %v after shutdown, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after shutdown")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after shutdown: %v", err)
	}
}

// TestDEKBuffersCleared checks that the service clears the plaintext of an
// Encrypt request once the call is done, and a Decrypt reply's plaintext
// once it is serialised, while the caller still gets the right bytes.
func TestDEKBuffersCleared(t *testing.T) {
	s, _, _ := newLocalServer(t)
	seed := bytes.Repeat([]byte{0x42}, 32)
	req := &kmsapi.EncryptRequest{Plaintext: bytes.Clone(seed)}
	intercept := unaryInterceptor(slog.New(slog.DiscardHandler), nil)
	resp, err := intercept(context.Background(), req, &grpc.UnaryServerInfo{FullMethod: "/v2.KeyManagementService/Encrypt"},
		func(ctx context.Context, r any) (any, error) { return s.Encrypt(ctx, r.(*kmsapi.EncryptRequest)) })
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(req.Plaintext, make([]byte, 32)) {
		t.Errorf("Encrypt request plaintext after the call = %x, want zeros", req.Plaintext)
	}
	enc := resp.(*kmsapi.EncryptResponse)
	dec, err := s.Decrypt(context.Background(), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
	if err != nil || !bytes.Equal(dec.Plaintext, seed) {
		t.Fatalf("Decrypt = %x, %v; want the seed", dec.GetPlaintext(), err)
	}

	codec := newZeroingCodec()
	wire, err := codec.Marshal(dec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dec.Plaintext, make([]byte, 32)) {
		t.Errorf("Decrypt reply plaintext after Marshal = %x, want zeros", dec.Plaintext)
	}
	var got kmsapi.DecryptResponse
	if err := codec.Unmarshal(wire, &got); err != nil || !bytes.Equal(got.Plaintext, seed) {
		t.Errorf("the serialised reply = %x, %v; want the seed", got.Plaintext, err)
	}
}

// TestServeSocketComesUpWhileHealthPortSquatted: another process holds the
// health address. The KMS socket serves anyway, and /livez comes up once
// the port is free.
func TestServeSocketComesUpWhileHealthPortSquatted(t *testing.T) {
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := squatter.Addr().String()
	old := healthRetryInterval
	healthRetryInterval = 50 * time.Millisecond
	t.Cleanup(func() { healthRetryInterval = old })

	sock := filepath.Join(t.TempDir(), "kms.sock")
	cfg := Config{
		Endpoint:        Endpoint{Address: sock},
		HealthAddr:      addr,
		HealthInterval:  time.Hour,
		HealthTimeout:   time.Second,
		ShutdownTimeout: time.Second,
		ProviderName:    "fake",
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, cfg, okFake(), log, prometheus.NewRegistry(), func() { close(ready) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve() = %v after shutdown, want nil", err)
		}
	})
	select {
	case <-ready:
	case err := <-served:
		t.Fatalf("Serve() with a squatted health port = %v, want the socket to serve", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the KMS socket did not come up while the health port was squatted")
	}
	client, conn, err := Dial("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := client.Status(context.Background(), &kmsapi.StatusRequest{}); err != nil {
		t.Errorf("Status() while the health port is squatted = %v", err)
	}

	_ = squatter.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/livez")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/livez never came up after the port was freed: %v\n%s", err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncWriter serializes writes from the logger's goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
