package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-plugin/kms-plugin/conformance"
	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/providers/local/localtest"
	"github.com/kms-plugin/kms-plugin/test/brokenplugin"
)

// serveLocal runs the real KMS service over a fresh local keyring, in
// process, and returns its endpoint.
func serveLocal(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	p, _ := localtest.Open(t, nil)
	ep, err := kms.ParseEndpoint("unix://" + filepath.Join(dir, "kms.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- kms.Serve(ctx, kms.Config{Endpoint: ep, HealthInterval: time.Second, HealthTimeout: time.Second, ShutdownTimeout: time.Second, ProviderName: "local"},
			p, nil, prometheus.NewRegistry(), func() { close(ready) })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("kms.Serve() = %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("kms.Serve() = %v", err)
	}
	return ep.String()
}

var summaryLine = regexp.MustCompile(`(?m)^(\d+) passed, (\d+) failed\n\z`)

func TestConformanceCommandPassesKMSPlugin(t *testing.T) {
	out, err := kmsctl("conformance", "--endpoint", serveLocal(t), "--concurrency", "16", "--round-trips", "4")
	if err != nil {
		t.Fatalf("kmsctl conformance = %v, want success\n%s", err, out)
	}
	m := summaryLine.FindStringSubmatch(out)
	if m == nil || m[2] != "0" || m[1] != "17" {
		t.Fatalf("kmsctl conformance output does not end in \"17 passed, 0 failed\":\n%s", out)
	}
	if n := len(regexp.MustCompile(`(?m)^PASS  `).FindAllString(out, -1)); n != len(conformance.Checks) {
		t.Errorf("kmsctl conformance printed %d PASS lines, want %d:\n%s", n, len(conformance.Checks), out)
	}
}

func TestConformanceCommandFailsBrokenPlugin(t *testing.T) {
	ep := brokenplugin.Serve(t, brokenplugin.EncryptKeyIDMismatch|brokenplugin.Deterministic|brokenplugin.UnknownCodes|brokenplugin.IgnoresKeyID)
	out, err := kmsctl("conformance", "--endpoint", ep, "--concurrency", "4", "--round-trips", "2")
	if !errors.Is(err, errNonConformant) {
		t.Fatalf("kmsctl conformance against a broken plugin = %v, want %v\n%s", err, errNonConformant, out)
	}
	m := summaryLine.FindStringSubmatch(out)
	if m == nil || m[2] == "0" {
		t.Fatalf("output does not end in a \"N passed, N failed\" line with failures:\n%s", out)
	}
	for _, check := range []string{conformance.CheckEncryptKeyID, conformance.CheckDistinctCiphertexts, conformance.CheckDecryptTampered, conformance.CheckDecryptWrongKeyID} {
		if !regexp.MustCompile(`(?m)^FAIL  ` + regexp.QuoteMeta(check) + ` `).MatchString(out) {
			t.Errorf("no FAIL line for %s:\n%s", check, out)
		}
	}
}

// TestUnreachablePluginOneLine: conformance and bench against no plugin
// print one line saying what is at the endpoint, and exit 2, not 1 ("does
// not conform") or 0.
func TestUnreachablePluginOneLine(t *testing.T) {
	dir := t.TempDir()
	notSocket := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(notSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	_ = l.Close()
	cases := []struct{ path, want string }{
		{filepath.Join(dir, "none.sock"), "does not exist"},
		{notSocket, "is not a socket"},
		{stale, "no plugin answers"},
	}
	for _, c := range cases {
		for _, args := range [][]string{
			{"conformance", "--endpoint", "unix://" + c.path, "--timeout", "300ms"},
			{"bench", "--endpoint", "unix://" + c.path, "--timeout", "300ms", "--duration", "100ms"},
		} {
			out, err := kmsctl(args...)
			if err == nil || exitCode(err) != exitUnreachable {
				t.Errorf("kmsctl %s = %v (exit %d), want exit %d\n%s", args[0], err, exitCode(err), exitUnreachable, out)
				continue
			}
			if !strings.Contains(err.Error(), "cannot reach plugin at unix://"+c.path) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("kmsctl %s error = %q, want it to say %q", args[0], err, c.want)
			}
			if strings.Contains(out, "FAIL") || strings.Contains(err.Error(), "rpc error") {
				t.Errorf("kmsctl %s floods or shows gRPC text:\n%s\n%v", args[0], out, err)
			}
		}
	}
}

// TestBenchFailsOnFailedCalls: a run in which calls failed exits non-zero
// with the count and the first error, unless --max-error-rate allows it.
func TestBenchFailsOnFailedCalls(t *testing.T) {
	ep := brokenplugin.Serve(t, brokenplugin.FailsUnderLoad)
	args := []string{"bench", "--endpoint", ep, "--op", "encrypt", "--concurrency", "16", "--duration", "300ms", "--warmup", "0", "--rounds", "1"}
	out, err := kmsctl(args...)
	if err == nil || !strings.Contains(err.Error(), "calls failed") || !strings.Contains(err.Error(), "first error") {
		t.Fatalf("bench with failing calls = %v, want a failure that counts them\n%s", err, out)
	}
	if out, err := kmsctl(append(args, "--max-error-rate", "1")...); err != nil {
		t.Errorf("bench --max-error-rate 1 = %v, want success\n%s", err, out)
	}
}

// TestBenchRefusesMixedUpFloorFlags: a floor or --pid an operator got
// wrong is refused before anything runs, naming the flag, and never with
// the Vault token on a command line.
func TestBenchRefusesMixedUpFloorFlags(t *testing.T) {
	clearVaultEnv(t)
	ep := serveLocal(t)
	base := []string{"bench", "--endpoint", ep, "--duration", "100ms", "--warmup", "0", "--rounds", "1"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--baseline", "--floor", "vault"}, `--floor "vault"`},
		{[]string{"--baseline", "--floor", "transit"}, "needs --vault-addr"},
		{[]string{"--baseline", "--floor", "transit", "--vault-addr", "http://127.0.0.1:8200", "--vault-key", "kms"}, "needs a Vault token"},
		{[]string{"--baseline", "--floor", "transit", "--vault-addr", "http://127.0.0.1:8200", "--vault-key", "kms", "--vault-token-file", "/nonexistent/token"}, "--vault-token-file"},
		{[]string{"--pid", "-5"}, "--pid -5"},
	} {
		out, err := kmsctl(append(base, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("kmsctl bench %q = %v, want an error naming %q\n%s", tc.args, err, tc.want, out)
		}
	}
	// The plugin's process is found from the socket: CPU per call is
	// reported without --pid.
	out, err := kmsctl(append(base, "--op", "status", "-o", "json")...)
	if err != nil {
		t.Fatalf("kmsctl bench = %v\n%s", err, out)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Rounds) != 1 || rep.Rounds[0].CPUMsPer1000 <= 0 {
		t.Errorf("bench -o json = %v, %+v; want a round with the plugin's CPU per 1000 calls", err, rep)
	}
}
