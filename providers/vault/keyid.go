package vault

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
)

// keyIDPrefix is the part of every key_id that names the transit key:
// "vault:[<namespace>/]<mount>/<key>".
func keyIDPrefix(namespace, mount, key string) string {
	p := strings.Trim(mount, "/") + "/" + key
	if ns := strings.Trim(namespace, "/"); ns != "" {
		p = ns + "/" + p
	}
	return "vault:" + p
}

// keyID is the public key_id of one version:
// "vault:[<namespace>/]<mount>/<key>:v<version>:<creation unix seconds>".
// The creation time makes it unique to this version's life: a key deleted
// and recreated under the same name gets new creation times, so its
// version 1 never repeats an old key_id (unless both were created within
// the same second).
func keyID(prefix string, version int64, created time.Time) string {
	return prefix + ":v" + strconv.FormatInt(version, 10) + ":" + strconv.FormatInt(created.Unix(), 10)
}

// encodeRef is the compact version reference stored in the kms envelope:
// the version number as decimal ASCII ("3"), readable in a hex dump and at
// most 19 bytes.
func encodeRef(version int64) []byte {
	return []byte(strconv.FormatInt(version, 10))
}

// parseRef reads a reference written by encodeRef; it refuses anything
// encodeRef would not have written (signs, leading zeros, zero).
func parseRef(ref []byte) (int64, error) {
	s := string(ref)
	if s == "" || len(s) > 19 || s[0] == '0' {
		return 0, fmt.Errorf("parse key version reference: %w", providers.ErrInvalidCiphertext)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("parse key version reference: %w", providers.ErrInvalidCiphertext)
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse key version reference: %w", providers.ErrInvalidCiphertext)
	}
	return v, nil
}

// associatedData is what transit binds to each ciphertext: the caller's
// aad and the key_id, framed so that no two (aad, keyID) pairs give the
// same bytes: a 4-byte big-endian length of aad, aad, then keyID.
func associatedData(aad []byte, keyID string) []byte {
	out := make([]byte, 4, 4+len(aad)+len(keyID))
	binary.BigEndian.PutUint32(out, uint32(len(aad)))
	out = append(out, aad...)
	return append(out, keyID...)
}

// transitPrefix is the "vault:v<N>:" prefix transit puts on ciphertexts.
func transitPrefix(version int64) string {
	return "vault:v" + strconv.FormatInt(version, 10) + ":"
}

// compactCiphertext turns transit's "vault:vN:<base64>" into the raw bytes
// after the prefix, checking that transit used version.
func compactCiphertext(s string, version int64) ([]byte, error) {
	p := transitPrefix(version)
	if !strings.HasPrefix(s, p) {
		got, _, _ := strings.Cut(strings.TrimPrefix(s, "vault:"), ":")
		if len(got) > 24 { // whatever answered is not transit: do not echo it all
			got = got[:24] + "..."
		}
		return nil, fmt.Errorf("vault encrypted with version %q, want v%d", got, version)
	}
	raw, err := base64.StdEncoding.DecodeString(s[len(p):])
	if err != nil || len(raw) == 0 {
		return nil, fmt.Errorf("vault returned a ciphertext that is not base64")
	}
	return raw, nil
}

// transitCiphertext rebuilds transit's string form from compact bytes.
func transitCiphertext(raw []byte, version int64) string {
	return transitPrefix(version) + base64.StdEncoding.EncodeToString(raw)
}
