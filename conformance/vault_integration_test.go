//go:build integration

package conformance_test

import (
	"testing"

	"github.com/kms-plugin/kms-plugin/conformance"
	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/vaultserver"
)

// TestKMSPluginVaultConforms runs the kit against the real kms-plugin
// binary on a real Vault dev server's transit engine.
func TestKMSPluginVaultConforms(t *testing.T) {
	s := vaultserver.StartTransit(t, vaultserver.Options{}, "transit", "kms")
	tokenFile := s.TokenFile(t)
	p := plugintest.Start(t, "--provider", "vault", "--vault-addr", s.Addr, "--vault-key", "kms", "--vault-token-file", tokenFile)
	rep := run(t, p.Endpoint)
	if !rep.OK() || len(rep.Results) != len(conformance.Checks) {
		logReport(t, rep)
		t.Fatalf("conformance of kms-plugin (vault) = %s over %d checks; failed: %v", rep.Summary(), len(rep.Results), failed(rep))
	}
	logReport(t, rep)
}
