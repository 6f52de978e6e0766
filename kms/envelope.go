package kms

import (
	"fmt"

	"github.com/kms-plugin/kms-plugin/providers"
)

// The ciphertext envelope that kms-plugin returns to kube-apiserver:
//
//	byte 0        format version (envelopeV1)
//	byte 1        length n of the provider's key reference, 1..maxKeyRefLen
//	bytes 2..2+n  the key reference (which key version sealed the data)
//	rest          the provider's AEAD output
//
// The first 2+n bytes are the envelope header. It is passed to the provider
// as associated data, together with the key_id, so that a ciphertext cannot
// be replayed under another key_id, format version or key reference.
const (
	envelopeV1     byte = 1
	maxKeyRefLen        = 64
	minSealedLen        = 16 // an AEAD tag at the least
	envelopeAADTag      = "kms-plugin envelope v1"
)

// errEnvelope is wrapped by every envelope parsing error; it is a kind of
// providers.ErrInvalidCiphertext.
var errEnvelope = fmt.Errorf("malformed envelope: %w", providers.ErrInvalidCiphertext)

// envelope is a parsed ciphertext.
type envelope struct {
	header []byte // format version, ref length and ref
	keyRef []byte
	sealed []byte
}

// envelopeHeader returns the header for keyRef.
func envelopeHeader(keyRef []byte) []byte {
	h := make([]byte, 2, 2+len(keyRef))
	h[0], h[1] = envelopeV1, byte(len(keyRef))
	return append(h, keyRef...)
}

// parseEnvelope checks every length before slicing. The slices it returns
// alias b.
func parseEnvelope(b []byte) (envelope, error) {
	switch {
	case len(b) == 0:
		return envelope{}, fmt.Errorf("%w: empty ciphertext", errEnvelope)
	case b[0] != envelopeV1:
		return envelope{}, fmt.Errorf("%w: unknown format version %d", errEnvelope, b[0])
	case len(b) < 2:
		return envelope{}, fmt.Errorf("%w: truncated header", errEnvelope)
	}
	n := int(b[1])
	if n == 0 || n > maxKeyRefLen {
		return envelope{}, fmt.Errorf("%w: key reference length %d out of range", errEnvelope, n)
	}
	if len(b) < 2+n+minSealedLen {
		return envelope{}, fmt.Errorf("%w: truncated (%d bytes)", errEnvelope, len(b))
	}
	return envelope{header: b[: 2+n : 2+n], keyRef: b[2 : 2+n : 2+n], sealed: b[2+n:]}, nil
}

// associatedData is what the provider binds (with the key_id) to the
// sealed bytes: a domain tag and the envelope header.
func associatedData(header []byte) []byte {
	aad := make([]byte, 0, len(envelopeAADTag)+len(header))
	aad = append(aad, envelopeAADTag...)
	return append(aad, header...)
}
