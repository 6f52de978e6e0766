package kms

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

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

// noopServer answers every call without work: the floor that the gRPC and
// socket stack set, measured beside the real service in the same run.
type noopServer struct {
	kmsapi.UnimplementedKeyManagementServiceServer
}

func (noopServer) Status(context.Context, *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	return &kmsapi.StatusResponse{Version: "v2", Healthz: "ok", KeyId: "noop"}, nil
}
func (noopServer) Encrypt(_ context.Context, r *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	return &kmsapi.EncryptResponse{Ciphertext: r.Plaintext, KeyId: "noop"}, nil
}
func (noopServer) Decrypt(_ context.Context, r *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	return &kmsapi.DecryptResponse{Plaintext: r.Ciphertext}, nil
}

// BenchmarkSocketRoundTrip compares an Encrypt+Decrypt round trip over a
// unix socket: "floor" is a no-op KMS server, "local" is kms-plugin's
// service over the local keyring. The ratio local/floor is the plugin's
// overhead; compare the two ns/op figures of one run.
func BenchmarkSocketRoundTrip(b *testing.B) {
	s, _, _ := newLocalServer(b)
	for _, c := range []struct {
		name string
		srv  kmsapi.KeyManagementServiceServer
	}{{"floor", noopServer{}}, {"local", s}} {
		b.Run(c.name, func(b *testing.B) {
			client := serveOnSocket(b, c.srv)
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

func serveOnSocket(b *testing.B, srv kmsapi.KeyManagementServiceServer) kmsapi.KeyManagementServiceClient {
	ep := Endpoint{Address: filepath.Join(b.TempDir(), "kms.sock")}
	l, err := Listen(ep, SocketOptions{})
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer(grpc.UnaryInterceptor(unaryInterceptor(slog.New(slog.DiscardHandler), nil)))
	kmsapi.RegisterKeyManagementServiceServer(gs, srv)
	go func() { _ = gs.Serve(l) }()
	b.Cleanup(func() { gracefulStop(gs, time.Second) })
	client, conn, err := Dial(ep.String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	return client
}
