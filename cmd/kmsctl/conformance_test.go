package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kms-plugin/kms-plugin/conformance"
	"github.com/kms-plugin/kms-plugin/conformance/brokenplugin"
	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/providers/local"
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
	path := filepath.Join(dir, "keyring.json")
	k, err := local.New(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := local.Create(path, k); err != nil {
		t.Fatal(err)
	}
	p, err := local.Open(path, 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
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

func TestConformanceCommandUnreachable(t *testing.T) {
	out, err := kmsctl("conformance", "--endpoint", "unix://"+filepath.Join(t.TempDir(), "none.sock"), "--timeout", "200ms")
	if err == nil {
		t.Fatalf("kmsctl conformance against no plugin succeeded:\n%s", out)
	}
	if !strings.Contains(out, "FAIL  status") {
		t.Errorf("output lacks a failed status check:\n%s", out)
	}
}
