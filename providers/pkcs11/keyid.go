package pkcs11

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/kms-plugin/kms-plugin/providers"
)

// maxVersion bounds version numbers, so that they print and parse the same
// everywhere and never overflow.
const maxVersion = 1 << 40

// objectLabel is the CKA_LABEL of version v of key label: "<label>-v<N>".
func objectLabel(label string, v int64) string {
	return label + "-v" + strconv.FormatInt(v, 10)
}

// parseObjectLabel returns N if s is "<label>-v<N>" with N written as
// objectLabel writes it (no sign, no leading zero, 1..maxVersion).
func parseObjectLabel(label, s string) (int64, bool) {
	rest, ok := strings.CutPrefix(s, label+"-v")
	if !ok {
		return 0, false
	}
	v, ok := parseDecimal(rest)
	return v, ok
}

func parseDecimal(s string) (int64, bool) {
	if s == "" || len(s) > 13 || s[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 1 || v > maxVersion {
		return 0, false
	}
	return v, true
}

// objectID is the CKA_ID of version v: 8 bytes, big-endian.
func objectID(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

// parseObjectID reads objectID's output.
func parseObjectID(b []byte) (int64, bool) {
	if len(b) != 8 {
		return 0, false
	}
	v := binary.BigEndian.Uint64(b)
	if v < 1 || v > maxVersion {
		return 0, false
	}
	return int64(v), true
}

// encodeRef is the version reference stored in the kms envelope: the
// version as decimal ASCII.
func encodeRef(v int64) []byte { return []byte(strconv.FormatInt(v, 10)) }

// parseRef reads encodeRef's output and refuses anything else.
func parseRef(ref []byte) (int64, error) {
	v, ok := parseDecimal(string(ref))
	if !ok {
		return 0, fmt.Errorf("parse key version reference: %w", providers.ErrInvalidCiphertext)
	}
	return v, nil
}

// checkHexDigits is the length of a check value in a key_id.
const checkHexDigits = 16

// tokenName is the token label as it appears in key_ids: blank padding
// removed, and every character other than [A-Za-z0-9._-] replaced by '_',
// so that the key_id stays printable and its separators unambiguous.
// Two tokens whose labels differ only there may share it; the check value
// still tells their keys apart.
func tokenName(label string) string {
	label = strings.TrimRight(label, " \x00")
	if label == "" {
		return "_"
	}
	b := []byte(label)
	for i, c := range b {
		if !labelChar(c) {
			b[i] = '_'
		}
	}
	return string(b)
}

// keyID is the public key_id of one version:
// "pkcs11:<token>/<key label>:v<N>:<check>".
func keyID(token, label string, v int64, check string) string {
	return "pkcs11:" + token + "/" + label + ":v" + strconv.FormatInt(v, 10) + ":" + check
}

// ciphertext format: formatGCM || IV || GCM output (ciphertext || tag).
const (
	formatGCM = 0x01
	ivSize    = 12
	tagSize   = 16
	// minCiphertext is the shortest valid ciphertext: a one-byte
	// plaintext. Encrypt refuses empty plaintexts.
	minCiphertext = 1 + ivSize + 1 + tagSize
	// maxPlaintext bounds what is sealed: a DEK seed is 32 bytes, and the
	// whole ciphertext must fit kube-apiserver's 1 KiB limit.
	maxPlaintext = 900
)

// splitCiphertext returns the IV and the GCM output of a ciphertext.
func splitCiphertext(ct []byte) (iv, body []byte, err error) {
	switch {
	case len(ct) == 0:
		return nil, nil, fmt.Errorf("empty ciphertext: %w", providers.ErrInvalidCiphertext)
	case ct[0] != formatGCM:
		return nil, nil, fmt.Errorf("unknown ciphertext format %#x: %w", ct[0], providers.ErrInvalidCiphertext)
	case len(ct) < minCiphertext:
		return nil, nil, fmt.Errorf("ciphertext of %d bytes is too short: %w", len(ct), providers.ErrInvalidCiphertext)
	case len(ct) > 1+ivSize+maxPlaintext+tagSize:
		return nil, nil, fmt.Errorf("ciphertext of %d bytes is too long: %w", len(ct), providers.ErrInvalidCiphertext)
	}
	return ct[1 : 1+ivSize], ct[1+ivSize:], nil
}

// associatedData is what GCM binds: a 4-byte big-endian length of aad,
// aad, then the key_id, so that no two (aad, key_id) pairs give the same
// bytes.
func associatedData(aad []byte, keyID string) []byte {
	out := make([]byte, 4, 4+len(aad)+len(keyID))
	binary.BigEndian.PutUint32(out, uint32(len(aad)))
	out = append(out, aad...)
	return append(out, keyID...)
}
