package bench

import (
	"context"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms/contract"
)

// NoopServer is a KMS v2 server that does no work: Encrypt returns the
// plaintext as ciphertext and Decrypt returns it back. Served on the same
// kind of socket with the same gRPC stack, it is the floor that any plugin's
// figures are compared with. It must never hold real data.
type NoopServer struct {
	kmsapi.UnimplementedKeyManagementServiceServer
}

var _ kmsapi.KeyManagementServiceServer = NoopServer{}

const noopKeyID = "noop"

// Status reports a healthy plugin with a fixed key_id.
func (NoopServer) Status(context.Context, *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	return &kmsapi.StatusResponse{Version: contract.APIVersion, Healthz: contract.HealthzOK, KeyId: noopKeyID}, nil
}

// Encrypt returns the plaintext unchanged.
func (NoopServer) Encrypt(_ context.Context, r *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	return &kmsapi.EncryptResponse{Ciphertext: r.GetPlaintext(), KeyId: noopKeyID}, nil
}

// Decrypt returns the ciphertext unchanged.
func (NoopServer) Decrypt(_ context.Context, r *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	return &kmsapi.DecryptResponse{Plaintext: r.GetCiphertext()}, nil
}
