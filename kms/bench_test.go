package kms

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"
)

func BenchmarkEnvelopeParse(b *testing.B) {
	ct := append(envelopeHeader([]byte{1}), make([]byte, 60)...)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseEnvelope(ct); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncryptDecrypt measures the service in process, without gRPC.
func BenchmarkEncryptDecrypt(b *testing.B) {
	s, _, _ := newLocalServer(b)
	ctx := context.Background()
	seed := make([]byte, 32)
	b.ReportAllocs()
	for b.Loop() {
		enc, err := s.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInterceptor measures what the service adds to every call
// besides the handler: the interceptor's metrics, log check and code
// mapping, plus the provider-latency observation the handler makes.
func BenchmarkInterceptor(b *testing.B) {
	m := NewMetrics(prometheus.NewRegistry(), "local")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ic := unaryInterceptor(log, m)
	info := &grpc.UnaryServerInfo{FullMethod: "/v2.KeyManagementService/Encrypt"}
	resp := &kmsapi.EncryptResponse{}
	handler := func(context.Context, any) (any, error) {
		m.observeProvider("encrypt", time.Now(), nil)
		return resp, nil
	}
	ctx := context.Background()
	req := &kmsapi.EncryptRequest{}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ic(ctx, req, info, handler); err != nil {
			b.Fatal(err)
		}
	}
}
