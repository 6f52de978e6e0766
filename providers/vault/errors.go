package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/providers"
)

// op names one kind of Vault call, for errors, metrics and classification.
type op string

const (
	opEncrypt   op = "encrypt"
	opDecrypt   op = "decrypt"
	opReadKey   op = "read_key"
	opRotate    op = "rotate"
	opConfigure op = "configure"
	opLogin     op = "login"
	opLookup    op = "token_lookup"
	opRenew     op = "token_renew"
)

// classify maps an error from a Vault call onto the providers sentinels.
// It is the only place that looks at Vault's status codes and messages.
// The result never carries the SDK's own message, which holds request URLs
// and multi-line text; it carries the status code and Vault's error
// strings, which name no secrets.
func classify(o op, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, providers.ErrNotConfigured) || errors.Is(err, providers.ErrInvalidCiphertext) ||
		errors.Is(err, providers.ErrUnavailable) || errors.Is(err, providers.ErrPermissionDenied) ||
		errors.Is(err, providers.ErrKeyNotFound) || errors.Is(err, providers.ErrKeyRetired) ||
		errors.Is(err, providers.ErrInvalidArgument) {
		return err // already classified
	}
	if errors.Is(err, errKeyMissing) {
		return fmt.Errorf("%w: %w", providers.ErrKeyNotFound, err)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		// Usually one attempt's own timeout, not the caller's deadline:
		// keep the context error out of the chain so that the kms package
		// maps it to Unavailable rather than DeadlineExceeded.
		return fmt.Errorf("vault %s: %w: %s", o, providers.ErrUnavailable, shortMessage(err))
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		return classifyResponse(o, re)
	}
	// Connection refused or reset, timeouts, TLS trouble, a proxy
	// answering garbage: transient from the plugin's point of view.
	return fmt.Errorf("vault %s: %w: %s", o, providers.ErrUnavailable, shortMessage(err))
}

func classifyResponse(o op, re *api.ResponseError) error {
	// Vault's error strings are read to classify, never repeated: a proxy
	// or a plugin in front of Vault may echo the request, which holds a
	// DEK seed, and these errors reach Status, the apiserver and the logs.
	// Only a phrase from the fixed list below, in this package's words,
	// goes into the message.
	msg := strings.Join(re.Errors, "; ")
	if len(msg) > maxClassifiedMessage {
		msg = msg[:maxClassifiedMessage]
	}
	detail := fmt.Sprintf("vault %s: HTTP %d: %s", o, re.StatusCode, vaultReason(msg))
	low := strings.ToLower(msg)
	switch {
	case re.StatusCode == http.StatusForbidden || re.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("%w: %s", providers.ErrPermissionDenied, detail)
	case re.StatusCode == http.StatusTooManyRequests || re.StatusCode >= 500 ||
		re.StatusCode == http.StatusPreconditionFailed || re.StatusCode == http.StatusRequestTimeout:
		// 503 sealed or standby, 5xx, 429 rate limit, 412 replication lag.
		return fmt.Errorf("%w: %s", providers.ErrUnavailable, detail)
	case re.StatusCode == http.StatusNotFound:
		if o == opLogin {
			// No auth method at that mount: a configuration error.
			return fmt.Errorf("%w: %s", providers.ErrNotConfigured, detail)
		}
		return fmt.Errorf("%w: %s", providers.ErrKeyNotFound, detail)
	case strings.Contains(low, "encryption key not found"):
		return fmt.Errorf("%w: %s", providers.ErrKeyNotFound, detail)
	case strings.Contains(low, "too old") || strings.Contains(low, "less than the minimum encryption"):
		return fmt.Errorf("%w: %s", providers.ErrKeyRetired, detail)
	}
	switch o {
	case opDecrypt:
		// Every other user error from transit decrypt is about the
		// ciphertext or its associated data: bad prefix, base64, version
		// too new, authentication failure.
		if re.StatusCode >= 400 && re.StatusCode < 500 {
			return fmt.Errorf("%w: %s", providers.ErrInvalidCiphertext, detail)
		}
	case opLogin, opLookup, opRenew:
		// Logins answer 400 for wrong credentials ("invalid role or
		// secret ID", "invalid JWT"); lookups and renewals for a bad token.
		if re.StatusCode >= 400 && re.StatusCode < 500 {
			return fmt.Errorf("%w: %s", providers.ErrPermissionDenied, detail)
		}
	case opEncrypt:
		if strings.Contains(low, "higher than the latest key version") {
			return fmt.Errorf("%w: %s", providers.ErrKeyNotFound, detail)
		}
	}
	if re.StatusCode >= 400 && re.StatusCode < 500 {
		return fmt.Errorf("%w: %s", providers.ErrInvalidArgument, detail)
	}
	return fmt.Errorf("%w: %s", providers.ErrUnavailable, detail)
}

// maxClassifiedMessage bounds how much of Vault's error text is searched.
const maxClassifiedMessage = 4096

// vaultReasons are the Vault error phrases that kms-plugin recognizes, each
// with the words it reports instead. Order matters: the first match wins.
var vaultReasons = []struct{ match, reason string }{
	{"permission denied", "permission denied"},
	{"encryption key not found", "transit key not found"},
	{"too old", "key version is below min_decryption_version"},
	{"less than the minimum encryption", "key version is below min_encryption_version"},
	{"higher than the latest key version", "key version is newer than the key"},
	{"message authentication failed", "ciphertext or its associated data failed authentication"},
	{"invalid ciphertext", "invalid ciphertext"},
	{"sealed", "Vault is sealed"},
	{"standby", "Vault node is a standby"},
	{"rate limit", "rate limited"},
	{"invalid role or secret id", "invalid role or secret ID"},
	{"invalid jwt", "invalid JWT"},
	{"invalid token", "invalid token"},
	{"token not found", "token not found"},
	{"bad token", "invalid token"},
	{"no handler for route", "no such path (is the auth method or engine enabled at this mount?)"},
	{"unsupported path", "no such path (is the auth method or engine enabled at this mount?)"},
}

// vaultReason names what Vault's message says in kms-plugin's own words,
// or says only how long it was: the message itself is never shown.
func vaultReason(msg string) string {
	low := strings.ToLower(msg)
	for _, r := range vaultReasons {
		if strings.Contains(low, r.match) {
			return r.reason
		}
	}
	if msg == "" {
		return "no error message"
	}
	return fmt.Sprintf("an error message of %d bytes (not shown: it may echo the request)", len(msg))
}

// shortMessage is err's message cut to a bounded length. The SDK's
// url.Error names the request URL, which holds no secret.
func shortMessage(err error) string {
	s := err.Error()
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
