package kms

import (
	"context"
	"testing"

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
