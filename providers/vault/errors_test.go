package vault

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/providers"
)

// TestErrorsNeverEchoTheRequest puts an echoing proxy where Vault should
// be: every error body repeats the request, DEK seed included. The errors
// that reach Status, the apiserver and the logs hold neither the seed nor
// its base64, and stay short.
func TestErrorsNeverEchoTheRequest(t *testing.T) {
	for _, code := range []int{400, 403, 404, 429, 500, 503} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_ = json.NewEncoder(w).Encode(map[string][]string{"errors": {"bad request: " + string(body)}})
		}))
		be := testAPIBackend(t, srv.URL, "hvs.test")
		seed := []byte("SEED-0123456789abcdef0123456789ab")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := be.Encrypt(ctx, 1, seed, []byte("aad"))
		cancel()
		srv.Close()
		if err == nil {
			t.Fatalf("HTTP %d: Encrypt succeeded against an echoing proxy", code)
		}
		got := classify(opEncrypt, err).Error()
		for _, secret := range []string{string(seed), base64.StdEncoding.EncodeToString(seed), base64.StdEncoding.EncodeToString(seed)[:16]} {
			if strings.Contains(got, secret) {
				t.Errorf("HTTP %d: error echoes the request (%q): %s", code, secret, got)
			}
		}
		if len(got) > 300 {
			t.Errorf("HTTP %d: error is %d bytes, want it short: %s", code, len(got), got)
		}
	}
}

// TestClassifyResponseNamesKnownReasons: what Vault says is reported in
// kms-plugin's words, with the right sentinel; anything else only by its
// length.
func TestClassifyResponseNamesKnownReasons(t *testing.T) {
	cases := []struct {
		name     string
		o        op
		code     int
		msg      string
		sentinel error
		want     string
	}{
		{"auth failure", opDecrypt, 400, "cipher: message authentication failed", providers.ErrInvalidCiphertext, "failed authentication"},
		{"missing key", opEncrypt, 400, "encryption key not found", providers.ErrKeyNotFound, "transit key not found"},
		{"too old", opDecrypt, 400, "ciphertext or signature version is disallowed by policy (too old)", providers.ErrKeyRetired, "min_decryption_version"},
		{"denied", opEncrypt, 403, "1 error occurred:\n\t* permission denied\n\n", providers.ErrPermissionDenied, "permission denied"},
		{"sealed", opEncrypt, 503, "Vault is sealed", providers.ErrUnavailable, "Vault is sealed"},
		{"unknown", opEncrypt, 400, "something with plaintext=c2VjcmV0", providers.ErrInvalidArgument, "33 bytes (not shown"},
		{"empty", opEncrypt, 500, "", providers.ErrUnavailable, "no error message"},
	}
	for _, c := range cases {
		err := classifyResponse(c.o, &api.ResponseError{StatusCode: c.code, Errors: []string{c.msg}})
		if !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: classifyResponse(%s, %d, %q) = %v, want %v naming %q", c.name, c.o, c.code, c.msg, err, c.sentinel, c.want)
		}
		if c.msg != "" && c.name == "unknown" && strings.Contains(err.Error(), "c2VjcmV0") {
			t.Errorf("%s: the message is echoed: %v", c.name, err)
		}
	}
}
