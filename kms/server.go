package kms

import (
	"context"
	"errors"
	"log/slog"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms/contract"
	"github.com/kms-plugin/kms-plugin/providers"
)

// Limits that kube-apiserver checks on every reply (CONTRACT.md).
const (
	apiVersion       = contract.APIVersion
	healthzOK        = contract.HealthzOK
	maxKeyIDLen      = contract.MaxKeyIDLen
	maxCiphertextLen = contract.MaxCiphertextLen
	// maxPlaintextLen is the largest plaintext whose envelope could still
	// fit: an envelope has at least a 3-byte header and a 16-byte tag.
	maxPlaintextLen = maxCiphertextLen - 3 - minSealedLen
)

// Server is the KMS v2 gRPC service over one provider. It enforces the
// contract's limits, frames ciphertexts in the project's envelope, and
// answers Status from the background health probe.
type Server struct {
	kmsapi.UnimplementedKeyManagementServiceServer

	provider providers.Provider
	health   *Health
	log      *slog.Logger
	metrics  *Metrics
}

var _ kmsapi.KeyManagementServiceServer = (*Server)(nil)

// NewServer returns a Server over provider. health must probe the same
// provider; metrics may be nil.
func NewServer(provider providers.Provider, health *Health, log *slog.Logger, metrics *Metrics) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{provider: provider, health: health, log: log, metrics: metrics}
}

// Status reports the key Encrypt uses now and the last probe's verdict.
// It never calls the backend. When the last probe found the key revoked
// (access denied, key deleted or disabled), Status fails closed with an
// error rather than an unhealthy reply; see docs/security.md.
func (s *Server) Status(_ context.Context, _ *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	probe := s.health.Last()
	if probe.Err != nil && providers.IsRevocation(probe.Err) {
		return nil, toStatus("status", probe.Err)
	}
	key, err := s.current()
	if err != nil {
		return nil, toStatus("status", err)
	}
	healthz := healthzOK
	if probe.Err != nil {
		healthz = "unhealthy: " + probe.Err.Error()
	}
	return &kmsapi.StatusResponse{Version: apiVersion, Healthz: healthz, KeyId: key.ID}, nil
}

// Encrypt seals a DEK seed under the provider's current key.
func (s *Server) Encrypt(ctx context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	const op = "encrypt"
	pt := req.GetPlaintext()
	if len(pt) == 0 {
		return nil, invalidArgument(op, "plaintext is empty")
	}
	if len(pt) > maxPlaintextLen {
		return nil, invalidArgument(op, "plaintext is %d bytes; at most %d fit in a %d-byte ciphertext", len(pt), maxPlaintextLen, maxCiphertextLen)
	}
	key, err := s.current()
	if err != nil {
		return nil, toStatus(op, err)
	}
	header := envelopeHeader(key.Ref)
	start := time.Now()
	sealed, err := s.provider.Encrypt(ctx, key, pt, associatedData(header))
	s.metrics.observeProvider(op, start, err)
	if err != nil {
		return nil, toStatus(op, err)
	}
	ct := append(header, sealed...)
	if len(ct) > maxCiphertextLen {
		return nil, invalidArgument(op, "ciphertext would be %d bytes, over the %d-byte limit", len(ct), maxCiphertextLen)
	}
	return &kmsapi.EncryptResponse{Ciphertext: ct, KeyId: key.ID}, nil
}

// Decrypt opens a ciphertext that Encrypt returned, with the key_id that
// came with it.
func (s *Server) Decrypt(ctx context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	const op = "decrypt"
	keyID, ct := req.GetKeyId(), req.GetCiphertext()
	if keyID == "" {
		return nil, invalidArgument(op, "key_id is empty")
	}
	if len(keyID) > maxKeyIDLen {
		return nil, invalidArgument(op, "key_id is %d bytes, over the %d-byte limit", len(keyID), maxKeyIDLen)
	}
	if len(ct) > maxCiphertextLen {
		return nil, invalidArgument(op, "ciphertext is %d bytes, over the %d-byte limit", len(ct), maxCiphertextLen)
	}
	env, err := parseEnvelope(ct)
	if err != nil {
		return nil, toStatus(op, err)
	}
	key := providers.Key{ID: keyID, Ref: env.keyRef}
	start := time.Now()
	pt, err := s.provider.Decrypt(ctx, key, env.sealed, associatedData(env.header))
	s.metrics.observeProvider(op, start, err)
	if err != nil {
		return nil, toStatus(op, err)
	}
	return &kmsapi.DecryptResponse{Plaintext: pt}, nil
}

// current returns the provider's current key after checking that its ID
// and reference fit the contract, so that a misbehaving provider is caught
// here rather than by kube-apiserver.
func (s *Server) current() (providers.Key, error) {
	key, err := s.provider.Current()
	if err != nil {
		return providers.Key{}, err
	}
	switch {
	case key.ID == "" || len(key.ID) > maxKeyIDLen:
		return providers.Key{}, errors.New("provider returned a key_id of invalid length")
	case len(key.Ref) == 0 || len(key.Ref) > maxKeyRefLen:
		return providers.Key{}, errors.New("provider returned a key reference of invalid length")
	}
	return key, nil
}
