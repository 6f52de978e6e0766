//go:build integration

package faults

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/vaultserver"
)

// TestVaultTLSVerifiedByDefault runs the kms-plugin binary against a Vault
// serving HTTPS with a certificate from a private CA. Without
// --vault-cacert the certificate is not trusted, so nothing is encrypted
// and health says why; with it, everything works. Verification is on
// unless an operator turns it off.
func TestVaultTLSVerifiedByDefault(t *testing.T) {
	t.Setenv("VAULT_CACERT", "")
	t.Setenv("VAULT_SKIP_VERIFY", "")
	s := vaultserver.StartTransit(t, vaultserver.Options{TLS: true}, "transit", "kms")
	tokenFile := s.TokenFile(t)
	args := []string{"--provider", "vault", "--vault-addr", s.Addr, "--vault-key", "kms", "--vault-token-file", tokenFile, "--vault-timeout", "1s"}

	untrusted := plugintest.Start(t, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := untrusted.Client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: make([]byte, 32)}); err == nil {
		t.Fatal("Encrypt through a Vault with an untrusted certificate succeeded")
	}
	code, body := untrusted.Get(t, "/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "certificate") {
		t.Errorf("/healthz with an untrusted Vault certificate = %d %q, want 503 naming the certificate", code, body)
	}
	if strings.Contains(untrusted.Logs.String(), "DANGER") {
		t.Errorf("the plugin warned about skipped verification without being asked to skip it")
	}

	trusted := plugintest.Start(t, append(args, "--vault-cacert", s.TLS.CACert)...)
	if _, err := trusted.Client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: make([]byte, 32)}); err != nil {
		t.Fatalf("Encrypt with --vault-cacert = %v", err)
	}
	plugintest.WaitFor(t, 10*time.Second, "a healthy plugin with --vault-cacert", func() bool {
		code, _ := trusted.Get(t, "/healthz")
		return code == http.StatusOK
	})
}
