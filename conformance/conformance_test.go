package conformance_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/conformance"
	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/test/brokenplugin"
	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

func run(t *testing.T, endpoint string) conformance.Report {
	t.Helper()
	client, conn, err := kms.Dial(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return conformance.Run(ctx, client, conformance.Options{Concurrency: 16, RoundTrips: 4, StatusPolls: 3, PollEvery: 50 * time.Millisecond})
}

func failed(rep conformance.Report) []string {
	var out []string
	for _, r := range rep.Results {
		if !r.Passed {
			out = append(out, r.Name)
		}
	}
	return out
}

func logReport(t *testing.T, rep conformance.Report) {
	t.Helper()
	for _, r := range rep.Results {
		t.Log(r)
	}
	t.Log(rep.Summary())
}

// TestKMSPluginLocalConforms runs the kit against the real kms-plugin
// binary on a local keyring.
func TestKMSPluginLocalConforms(t *testing.T) {
	p := plugintest.Start(t, "--keyring", plugintest.NewKeyring(t))
	rep := run(t, p.Endpoint)
	if !rep.OK() || len(rep.Results) != len(conformance.Checks) {
		logReport(t, rep)
		t.Fatalf("conformance of kms-plugin (local) = %s over %d checks, want all %d passed; failed: %v", rep.Summary(), len(rep.Results), len(conformance.Checks), failed(rep))
	}
}

// TestCorrectFakeConforms makes sure the kit passes a plugin that honours
// the contract, so that each fault below is what makes a check fail.
func TestCorrectFakeConforms(t *testing.T) {
	rep := run(t, brokenplugin.Serve(t, 0))
	if !rep.OK() {
		logReport(t, rep)
		t.Fatalf("conformance of the correct fake = %s; failed: %v", rep.Summary(), failed(rep))
	}
}

func TestBrokenPluginsFail(t *testing.T) {
	tests := []struct {
		name  string
		fault brokenplugin.Fault
		want  []string // checks that must fail
	}{
		{"status version v1", brokenplugin.StatusVersionV1, []string{conformance.CheckStatus, conformance.CheckHealthAfterAbuse}},
		{"healthz not ok", brokenplugin.HealthzNotOK, []string{conformance.CheckStatus, conformance.CheckHealthAfterAbuse}},
		{"key_id flaps", brokenplugin.KeyIDFlaps, []string{conformance.CheckKeyIDStable}},
		{"encrypt key_id differs", brokenplugin.EncryptKeyIDMismatch, []string{conformance.CheckEncryptKeyID}},
		{"oversized ciphertext", brokenplugin.OversizedCiphertext, []string{conformance.CheckEncryptLimits, conformance.CheckRoundTripSizes}},
		{"annotation key not FQDN", brokenplugin.BadAnnotationKey, []string{conformance.CheckEncryptLimits}},
		{"annotations over 32 KiB", brokenplugin.HugeAnnotations, []string{conformance.CheckEncryptLimits}},
		{"deterministic", brokenplugin.Deterministic, []string{conformance.CheckDistinctCiphertexts}},
		{"plaintext visible", brokenplugin.PlaintextVisible, []string{conformance.CheckHidesPlaintext, conformance.CheckDecryptTampered}},
		{"accepts anything", brokenplugin.AcceptsAnything, []string{conformance.CheckDecryptTampered, conformance.CheckDecryptTruncated, conformance.CheckDecryptGarbage, conformance.CheckDecryptOversized}},
		{"no gRPC codes", brokenplugin.UnknownCodes, []string{conformance.CheckDecryptTampered, conformance.CheckDecryptEmpty, conformance.CheckDecryptWrongKeyID}},
		{"ignores key_id", brokenplugin.IgnoresKeyID, []string{conformance.CheckDecryptWrongKeyID}},
		{"fails under load", brokenplugin.FailsUnderLoad, []string{conformance.CheckConcurrentRoundTrips}},
		{"unhealthy after abuse", brokenplugin.BreaksAfterAbuse, []string{conformance.CheckHealthAfterAbuse}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := run(t, brokenplugin.Serve(t, tt.fault))
			got := failed(rep)
			for _, w := range tt.want {
				if !slices.Contains(got, w) {
					logReport(t, rep)
					t.Errorf("check %s passed against a plugin with fault %q; failed checks: %v", w, tt.name, got)
				}
			}
			if rep.OK() {
				t.Errorf("Report.OK() = true for fault %q", tt.name)
			}
		})
	}
}

func TestSummaryLine(t *testing.T) {
	rep := conformance.Report{Results: []conformance.Result{{Name: "a", Passed: true}, {Name: "b"}, {Name: "c", Passed: true}}}
	if got, want := rep.Summary(), "2 passed, 1 failed"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
	if got := rep.Results[1].String(); !strings.HasPrefix(got, "FAIL  b") {
		t.Errorf("Result.String() = %q, want a FAIL line", got)
	}
}

// TestKmsctlExitCode runs the kmsctl binary, as CI and operators do: exit
// status 0 against kms-plugin, non-zero against a broken plugin, and the
// summary as the last line either way.
func TestKmsctlExitCode(t *testing.T) {
	p := plugintest.Start(t, "--keyring", plugintest.NewKeyring(t))
	out, err := plugintest.Kmsctl(t, "conformance", "--endpoint", p.Endpoint, "--concurrency", "8", "--round-trips", "2")
	if err != nil || !strings.HasSuffix(out, fmt.Sprintf("%d passed, 0 failed\n", len(conformance.Checks))) {
		t.Errorf("kmsctl conformance against kms-plugin = %v\n%s", err, out)
	}
	out, err = plugintest.Kmsctl(t, "conformance", "--endpoint", brokenplugin.Serve(t, brokenplugin.AcceptsAnything), "--concurrency", "8", "--round-trips", "2")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("kmsctl conformance against a broken plugin = %v, want exit status 1\n%s", err, out)
	}
	if !regexp.MustCompile(`\n\d+ passed, [1-9]\d* failed\nkmsctl: the plugin does not conform`).MatchString(out) {
		t.Errorf("kmsctl conformance output lacks the summary and error:\n%s", out)
	}
}
