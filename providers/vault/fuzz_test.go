package vault

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/providers"
)

// Fuzz targets for every place the provider reads bytes that come from
// Vault (or from whoever answers in its place: a proxy, a compromised or
// misconfigured server). Seeds live in testdata/fuzz/<Target>/; any crasher
// found becomes a seed there, and so a regression test.

// fuzzToken is the token the fuzzed client sends. Vault never echoes it,
// so no error may contain it unless the response body itself did.
const fuzzToken = "hvs.FUZZ-secret-token-never-logged"

// FuzzVaultHTTPResponse answers every call of the real SDK-backed backend
// with the fuzzed status code and body, and checks that the backend and
// the classifier never panic, never return both a value and an error,
// classify every error onto one providers sentinel, and never put the
// token into an error.
func FuzzVaultHTTPResponse(f *testing.F) {
	for _, s := range []struct {
		code int
		body string
	}{
		{200, `{"data":{"ciphertext":"vault:v1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"}}`},
		{200, `{"data":{"plaintext":"a2V5IGJ5dGVz"}}`},
		{200, `{"data":{"type":"aes256-gcm96","derived":false,"latest_version":2,"min_decryption_version":1,"min_encryption_version":0,"supports_encryption":true,"keys":{"1":1700000000,"2":1700000100}}}`},
		{200, `{"auth":{"client_token":"hvs.new","lease_duration":3600,"renewable":true}}`},
		{200, `{"data":{"ttl":3600,"renewable":true}}`},
		{200, `{"data":{"keys":{"0":1}}}`},
		{200, `{"data":{"latest_version":"x"}}`},
		{200, `{"data":null}`},
		{200, `null`},
		{200, ``},
		{204, ``},
		{400, `{"errors":["cipher: message authentication failed"]}`},
		{400, `{"errors":["invalid ciphertext: no prefix"]}`},
		{400, `{"errors":["ciphertext or signature version is disallowed by policy (too old)"]}`},
		{400, `{"errors":["encryption key not found"]}`},
		{403, `{"errors":["permission denied"]}`},
		{404, ``},
		{412, `{"errors":[]}`},
		{429, `{"errors":["request path \"transit/encrypt/kms\": rate limit quota exceeded"]}`},
		{500, `{"errors":["internal error"]}`},
		{503, `{"errors":["Vault is sealed"]}`},
		{502, `<html>bad gateway</html>`},
		{200, `{"data":{"plaintext":"not base64!"}}`},
	} {
		f.Add(s.code, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, code int, body []byte) {
		if code < 100 || code > 599 {
			return
		}
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_, _ = w.Write(body)
		}))
		defer srv.Close()
		be := testAPIBackend(t, srv.URL, fuzzToken)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		echoed := bytes.Contains(body, []byte(fuzzToken))

		check := func(o op, err error) {
			t.Helper()
			if err == nil {
				return
			}
			cerr := classify(o, err)
			if !isClassified(cerr) {
				t.Fatalf("classify(%s, %v) = %v: wraps no providers sentinel", o, err, cerr)
			}
			if !echoed && strings.Contains(cerr.Error(), fuzzToken) {
				t.Fatalf("classify(%s) error contains the token: %v", o, cerr)
			}
		}

		ct, err := be.Encrypt(ctx, 1, []byte("seed"), []byte("ad"))
		check(opEncrypt, err)
		if err == nil {
			if ct == "" {
				t.Fatal("Encrypt returned an empty ciphertext and no error")
			}
			// The provider checks transit's string before keeping it.
			if raw, err := compactCiphertext(ct, 1); err == nil && len(raw) == 0 {
				t.Fatal("compactCiphertext accepted an empty ciphertext")
			}
		}
		pt, err := be.Decrypt(ctx, "vault:v1:AAAA", []byte("ad"))
		check(opDecrypt, err)
		if err != nil && pt != nil {
			t.Fatal("Decrypt returned a plaintext with an error")
		}
		m, err := be.ReadKey(ctx)
		check(opReadKey, err)
		if err == nil {
			vs := m.versions()
			if !slices.IsSorted(vs) || (len(vs) > 0 && vs[0] < 1) {
				t.Fatalf("versions() = %v, want ascending positive versions", vs)
			}
			_ = m.usable()
		}
		ti, err := be.Login(ctx, "approle", map[string]any{"role_id": "r", "secret_id": "s"})
		check(opLogin, err)
		if err == nil && ti.Token == "" {
			t.Fatal("Login returned no token and no error")
		}
		_, err = be.LookupSelf(ctx)
		check(opLookup, err)
		_, err = be.RenewSelf(ctx)
		check(opRenew, err)
	})
}

// isClassified reports whether err wraps one of the providers sentinels,
// which the kms package maps to a gRPC code.
func isClassified(err error) bool {
	for _, s := range []error{
		providers.ErrInvalidCiphertext, providers.ErrInvalidArgument, providers.ErrKeyNotFound,
		providers.ErrKeyRetired, providers.ErrPermissionDenied, providers.ErrUnavailable,
		providers.ErrNotConfigured,
	} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// FuzzClassifyResponse feeds the classifier every status code and error
// text Vault could send: the result always wraps a sentinel and stays
// bounded, however long Vault's message.
func FuzzClassifyResponse(f *testing.F) {
	f.Add(400, "cipher: message authentication failed", uint8(1))
	f.Add(400, "encryption key not found", uint8(0))
	f.Add(400, "requested version for encryption is higher than the latest key version", uint8(0))
	f.Add(400, "ciphertext or signature version is disallowed by policy (too old)", uint8(1))
	f.Add(400, "invalid role or secret ID", uint8(5))
	f.Add(403, "permission denied", uint8(2))
	f.Add(404, "", uint8(5))
	f.Add(503, "Vault is sealed", uint8(3))
	f.Add(418, strings.Repeat("x", 1000), uint8(4))
	ops := []op{opEncrypt, opDecrypt, opReadKey, opRotate, opConfigure, opLogin, opLookup, opRenew}
	f.Fuzz(func(t *testing.T, code int, msg string, opIndex uint8) {
		o := ops[int(opIndex)%len(ops)]
		re := &api.ResponseError{StatusCode: code, Errors: strings.Split(msg, "\x00")}
		err := classifyResponse(o, re)
		if !isClassified(err) {
			t.Fatalf("classifyResponse(%s, %d, %q) = %v: wraps no sentinel", o, code, msg, err)
		}
		// 200 bytes of Vault's text, "..." and a short prefix at most.
		if n := len(err.Error()); n > 400 {
			t.Fatalf("classifyResponse(%s, %d, ...) message is %d bytes, want it bounded", o, code, n)
		}
	})
}

// FuzzTransitCiphertext checks the conversion between transit's
// "vault:vN:<base64>" strings and the compact bytes kept in the envelope:
// whatever Vault returns, a string is accepted only if it round-trips.
func FuzzTransitCiphertext(f *testing.F) {
	f.Add("vault:v1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g", int64(1))
	f.Add("vault:v12:AAAA", int64(12))
	f.Add("vault:v2:AAAA", int64(1))
	f.Add("vault:v1:", int64(1))
	f.Add("vault:v1:!!!!", int64(1))
	f.Add("vault:v1:AAAA\n", int64(1))
	f.Add("vault:v1:AA==", int64(1))
	f.Add("", int64(0))
	f.Fuzz(func(t *testing.T, s string, version int64) {
		raw, err := compactCiphertext(s, version)
		if err != nil {
			if errMsg := err.Error(); strings.Contains(errMsg, s) && len(s) > 40 {
				t.Fatalf("compactCiphertext error echoes the whole ciphertext: %v", err)
			}
			return
		}
		if len(raw) == 0 {
			t.Fatalf("compactCiphertext(%q) accepted an empty ciphertext", s)
		}
		back := transitCiphertext(raw, version)
		if again, err := compactCiphertext(back, version); err != nil || !bytes.Equal(again, raw) {
			t.Fatalf("round trip of %q: %q, %v", s, back, err)
		}
	})
}

// FuzzParseRef checks the envelope's key reference for Vault: only what
// encodeRef writes is accepted.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"1", "9", "10", "9223372036854775807", "9223372036854775808", "0", "01", "-1", "+1", "", "1a", "١"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, ref []byte) {
		v, err := parseRef(ref)
		if err != nil {
			if !errors.Is(err, providers.ErrInvalidCiphertext) {
				t.Fatalf("parseRef(%q) = %v, want it to wrap %v", ref, err, providers.ErrInvalidCiphertext)
			}
			return
		}
		if v < 1 || !bytes.Equal(encodeRef(v), ref) {
			t.Fatalf("parseRef(%q) = %d, but encodeRef(%d) = %q", ref, v, v, encodeRef(v))
		}
	})
}

// FuzzParseKeyMetadata decodes a transit key description the way the SDK
// does (numbers as json.Number) and checks parseKeyMetadata's invariants.
func FuzzParseKeyMetadata(f *testing.F) {
	f.Add([]byte(`{"data":{"type":"aes256-gcm96","latest_version":1,"min_decryption_version":1,"min_encryption_version":0,"keys":{"1":1700000000}}}`))
	f.Add([]byte(`{"data":{"type":"aes256-gcm96","latest_version":3,"min_decryption_version":2,"min_encryption_version":0,"keys":{"2":1,"3":2}}}`))
	f.Add([]byte(`{"data":{"latest_version":1.5,"min_decryption_version":1,"min_encryption_version":0,"keys":{"1":"x"}}}`))
	f.Add([]byte(`{"data":{"latest_version":99999999999999999999,"min_decryption_version":1,"min_encryption_version":0}}`))
	f.Add([]byte(`{"data":{"latest_version":1,"min_decryption_version":1,"min_encryption_version":0,"keys":{"-1":1}}}`))
	f.Add([]byte(`{"data":{"latest_version":1,"min_decryption_version":1,"min_encryption_version":0,"keys":[1]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		s, err := api.ParseSecret(bytes.NewReader(body))
		if err != nil || s == nil || s.Data == nil {
			return
		}
		m, err := parseKeyMetadata(s.Data)
		if err != nil {
			return
		}
		for v := range m.Created {
			if v < 1 {
				t.Fatalf("parseKeyMetadata accepted version %d", v)
			}
		}
		if err := m.usable(); err == nil {
			if m.Latest < 1 || m.Created[m.Latest].IsZero() || !aeadKeyTypes[m.Type] || m.Derived {
				t.Fatalf("usable() accepted %+v", m)
			}
		}
	})
}
