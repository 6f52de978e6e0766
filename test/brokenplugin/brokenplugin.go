// Package brokenplugin is a small KMS v2 plugin for testing the conformance
// kit: with no faults it honours the whole contract (AES-256-GCM under one
// random key, the key_id bound as associated data, precise gRPC codes);
// each Fault breaks one rule the way real plugins have broken it. Tests
// only: it keeps its key in memory and logs nothing.
package brokenplugin

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms/contract"
)

// Fault is one way to break the contract.
type Fault uint32

// The faults. Combine them with |.
const (
	StatusVersionV1      Fault = 1 << iota // Status says version "v1"
	HealthzNotOK                           // Status says healthz "fine"
	KeyIDFlaps                             // Status' key_id changes on every poll
	EncryptKeyIDMismatch                   // Encrypt's key_id differs from Status'
	OversizedCiphertext                    // Encrypt pads its ciphertext past 1024 bytes
	BadAnnotationKey                       // Encrypt returns an annotation key that is not an FQDN
	HugeAnnotations                        // Encrypt returns 40 KiB of annotations
	Deterministic                          // a fixed nonce: equal plaintexts, equal ciphertexts
	PlaintextVisible                       // the ciphertext is the plaintext in the clear
	AcceptsAnything                        // Decrypt returns whatever it can, never refuses
	UnknownCodes                           // errors carry no gRPC code (Unknown)
	IgnoresKeyID                           // Decrypt does not check the key_id
	FailsUnderLoad                         // refuses calls when more than 4 are in flight
	BreaksAfterAbuse                       // turns unhealthy after a few refused Decrypts
)

const keyID = "brokenplugin.test/key-1"

// Server is the plugin.
type Server struct {
	kmsapi.UnimplementedKeyManagementServiceServer

	faults   Fault
	aead     cipher.AEAD
	polls    atomic.Int64
	inFlight atomic.Int64
	refused  atomic.Int64
}

var _ kmsapi.KeyManagementServiceServer = (*Server)(nil)

// New returns a plugin with faults.
func New(faults Fault) *Server {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	return &Server{faults: faults, aead: aead}
}

func (s *Server) has(f Fault) bool { return s.faults&f != 0 }

// Serve runs a plugin with faults on a unix socket in a temporary
// directory until the test ends, and returns its endpoint.
func Serve(t testing.TB, faults Fault) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "broken.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kmsapi.RegisterKeyManagementServiceServer(srv, New(faults))
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return "unix://" + path
}

func (s *Server) fail(c codes.Code, msg string) error {
	s.refused.Add(1)
	if s.has(UnknownCodes) {
		return fmt.Errorf("%s", msg)
	}
	return status.Error(c, msg)
}

func (s *Server) enter() (func(), error) {
	n := s.inFlight.Add(1)
	done := func() { s.inFlight.Add(-1) }
	if s.has(FailsUnderLoad) {
		if n > 4 {
			done()
			return nil, status.Error(codes.ResourceExhausted, "too many calls")
		}
		time.Sleep(5 * time.Millisecond) // slow enough for calls to pile up
	}
	return done, nil
}

// Status reports the key and health.
func (s *Server) Status(context.Context, *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	resp := &kmsapi.StatusResponse{Version: contract.APIVersion, Healthz: contract.HealthzOK, KeyId: keyID}
	if s.has(StatusVersionV1) {
		resp.Version = "v1"
	}
	if s.has(HealthzNotOK) {
		resp.Healthz = "fine"
	}
	if s.has(KeyIDFlaps) {
		resp.KeyId = fmt.Sprintf("%s-poll-%d", keyID, s.polls.Add(1))
	}
	if s.has(BreaksAfterAbuse) && s.refused.Load() > 5 {
		resp.Healthz = "broken by bad input"
	}
	return resp, nil
}

// Encrypt seals the plaintext with the key_id as associated data.
func (s *Server) Encrypt(_ context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	done, err := s.enter()
	if err != nil {
		return nil, err
	}
	defer done()
	pt := req.GetPlaintext()
	if len(pt) == 0 {
		return nil, s.fail(codes.InvalidArgument, "empty plaintext")
	}
	resp := &kmsapi.EncryptResponse{KeyId: keyID}
	switch {
	case s.has(PlaintextVisible):
		resp.Ciphertext = append([]byte("clear:"), pt...)
	default:
		nonce := make([]byte, s.aead.NonceSize())
		if !s.has(Deterministic) {
			_, _ = rand.Read(nonce)
		}
		resp.Ciphertext = s.aead.Seal(nonce, nonce, pt, []byte(keyID))
	}
	if s.has(OversizedCiphertext) {
		resp.Ciphertext = append(resp.Ciphertext, make([]byte, 1025)...)
	}
	if s.has(EncryptKeyIDMismatch) {
		resp.KeyId = keyID + "-encrypt"
	}
	if s.has(BadAnnotationKey) {
		resp.Annotations = map[string][]byte{"not_an_fqdn": []byte("x")}
	}
	if s.has(HugeAnnotations) {
		resp.Annotations = map[string][]byte{"size.brokenplugin.test": make([]byte, 40<<10)}
	}
	return resp, nil
}

// Decrypt opens a ciphertext from Encrypt.
func (s *Server) Decrypt(_ context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	done, err := s.enter()
	if err != nil {
		return nil, err
	}
	defer done()
	ct, id := req.GetCiphertext(), req.GetKeyId()
	// The oversized fault pads with 1025 zero bytes; strip them so the
	// padded ciphertexts still open.
	if s.has(OversizedCiphertext) && len(ct) > 1025 && bytes.Equal(ct[len(ct)-1025:], make([]byte, 1025)) {
		ct = ct[:len(ct)-1025]
	}
	if !s.has(IgnoresKeyID) && !s.has(AcceptsAnything) && !strings.HasPrefix(id, keyID) {
		return nil, s.fail(codes.InvalidArgument, "unknown key_id")
	}
	if s.has(PlaintextVisible) {
		pt, ok := bytes.CutPrefix(ct, []byte("clear:"))
		if !ok && !s.has(AcceptsAnything) {
			return nil, s.fail(codes.InvalidArgument, "not a ciphertext")
		}
		return &kmsapi.DecryptResponse{Plaintext: pt}, nil
	}
	ns := s.aead.NonceSize()
	if len(ct) < ns+s.aead.Overhead() || len(ct) > contract.MaxCiphertextLen {
		if s.has(AcceptsAnything) {
			return &kmsapi.DecryptResponse{Plaintext: ct}, nil
		}
		return nil, s.fail(codes.InvalidArgument, "ciphertext has the wrong length")
	}
	pt, err := s.aead.Open(nil, ct[:ns], ct[ns:], []byte(keyID))
	if err != nil {
		if s.has(AcceptsAnything) {
			// What a plugin without authentication does: hand back bytes.
			return &kmsapi.DecryptResponse{Plaintext: ct[ns:]}, nil
		}
		return nil, s.fail(codes.InvalidArgument, "authentication failed")
	}
	if !s.has(IgnoresKeyID) && id != keyID && !s.has(EncryptKeyIDMismatch) {
		return nil, s.fail(codes.InvalidArgument, "wrong key_id")
	}
	return &kmsapi.DecryptResponse{Plaintext: pt}, nil
}
