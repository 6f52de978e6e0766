package main

import (
	"encoding/json"
	"strings"
	"testing"
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
