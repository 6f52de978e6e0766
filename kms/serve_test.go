package kms

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
