package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/kms-plugin/kms-plugin/test/brokenplugin"
)

// TestUnknownSubcommandFails: a mistyped subcommand is an error that names
// it and suggests the closest command, at every level, never help and
// exit 0.
func TestUnknownSubcommandFails(t *testing.T) {
	cases := []struct {
		args    []string
		suggest string
	}{
		{[]string{"keyring", "lsit", "--keyring", "x"}, "list"},
		{[]string{"keyring", "lsit"}, "list"},
		{[]string{"vault", "rotat"}, "rotate"},
		{[]string{"statsu"}, "status"},
		{[]string{"nothing-like-it"}, ""},
	}
	for _, c := range cases {
		out, err := kmsctl(c.args...)
		if err == nil {
			t.Errorf("kmsctl %s succeeded:\n%s", strings.Join(c.args, " "), out)
			continue
		}
		if !strings.Contains(err.Error(), "unknown command") || (c.suggest != "" && !strings.Contains(err.Error(), c.suggest+"?")) {
			t.Errorf("kmsctl %s = %v, want an unknown command error suggesting %q", strings.Join(c.args, " "), err, c.suggest)
		}
	}
	if out, err := kmsctl("vault"); err != nil || !strings.Contains(out, "Available Commands") {
		t.Errorf("kmsctl vault with no subcommand = %v, want its help\n%s", err, out)
	}
}

// TestStatusJSONError: status -o json against no plugin prints a JSON
// error object naming the endpoint, and exits 2.
func TestStatusJSONError(t *testing.T) {
	ep := "unix://" + t.TempDir() + "/none.sock"
	out, err := kmsctl("status", "--endpoint", ep, "-o", "json", "--timeout", "300ms")
	if err == nil || exitCode(err) != exitUnreachable {
		t.Fatalf("status of no plugin = %v (exit %d), want exit %d", err, exitCode(err), exitUnreachable)
	}
	var got statusError
	if jerr := json.Unmarshal([]byte(out), &got); jerr != nil || got.Endpoint != ep || !strings.Contains(got.Error, "does not exist") {
		t.Errorf("status -o json on failure printed %q (%v); want {endpoint, error} naming the missing socket", out, jerr)
	}
}

// TestMessagesForPeople: kmsctl's errors say what is wrong and what to do,
// without Go-internal wording: no strconv text, no trailing sentinel word,
// no gRPC framing; a missing version lists the ones there are.
func TestMessagesForPeople(t *testing.T) {
	path := t.TempDir() + "/keyring.json"
	if _, err := kmsctl("keyring", "init", "--keyring", path); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"keyring", "promote", "--keyring", path, "--version", "abc"}, `--version "abc": want a whole number`},
		{[]string{"keyring", "promote", "--keyring", path, "--version", "7"}, "version 7 does not exist (versions: 1)"},
		{[]string{"keyring", "retire", "--keyring", path, "--version", "1"}, "it is the primary version; rotate or promote another first"},
		{[]string{"status", "--timeout", "5x"}, `--timeout "5x": want a duration`},
	}
	for _, c := range cases {
		_, err := kmsctl(c.args...)
		if err == nil {
			t.Errorf("kmsctl %s succeeded", strings.Join(c.args, " "))
			continue
		}
		msg := operatorMessage(err)
		if !strings.Contains(msg, c.want) {
			t.Errorf("kmsctl %s: %q, want %q", strings.Join(c.args, " "), msg, c.want)
		}
		for _, bad := range []string{"strconv.", "invalid argument", "rpc error", "provider not configured"} {
			if strings.Contains(msg, bad) {
				t.Errorf("kmsctl %s: %q holds Go-internal wording %q", strings.Join(c.args, " "), msg, bad)
			}
		}
	}
	if got := operatorMessage(errors.New("status of x: rpc error: code = Unavailable desc = connection refused")); got != "status of x: Unavailable: connection refused" {
		t.Errorf("operatorMessage(gRPC text) = %q", got)
	}
}

// TestNoKubeconfig: without a kubeconfig, migrate says how to give one,
// not client-go's hint about the obsolete KUBERNETES_MASTER.
func TestNoKubeconfig(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	t.Setenv("HOME", t.TempDir())
	_, err := kmsctl("migrate", "--resources", "secrets")
	if err == nil || !strings.Contains(err.Error(), "--kubeconfig") || strings.Contains(err.Error(), "KUBERNETES_MASTER") {
		t.Errorf("migrate without a kubeconfig = %v, want advice to pass --kubeconfig", err)
	}
}

// TestOutputFormats: commands that print a result take -o table|json|yaml,
// with the same fields in json and yaml.
func TestOutputFormats(t *testing.T) {
	path := t.TempDir() + "/keyring.json"
	for _, c := range [][]string{
		{"keyring", "init", "--keyring", path},
		{"keyring", "add", "--keyring", path},
		{"keyring", "promote", "--keyring", path, "--version", "2"},
		{"keyring", "rotate", "--keyring", path},
		{"keyring", "retire", "--keyring", path, "--version", "1"},
	} {
		format := "json"
		if c[1] == "add" || c[1] == "rotate" {
			format = "yaml"
		}
		out, err := kmsctl(append(c, "-o", format)...)
		if err != nil {
			t.Fatalf("kmsctl %s -o %s: %v\n%s", strings.Join(c, " "), format, err, out)
		}
		var r keyringResult
		if err := yaml.Unmarshal([]byte(out), &r); err != nil || r.KeyID == "" || r.Version == 0 || r.State == "" || r.Keyring != path {
			t.Errorf("kmsctl %s -o %s = %q (%v); want keyring, version, key_id and state", strings.Join(c, " "), format, out, err)
		}
	}

	ep := brokenplugin.Serve(t, brokenplugin.Deterministic)
	out, err := kmsctl("conformance", "--endpoint", ep, "--concurrency", "2", "--round-trips", "2", "-o", "json")
	var rep conformanceReport
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || err == nil || rep.Failed == 0 || len(rep.Results) != rep.Passed+rep.Failed {
		t.Errorf("conformance -o json against a broken plugin = %v, %v; want a JSON report with failures and a non-zero exit\n%s", err, jerr, out)
	}
}
