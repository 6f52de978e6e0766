package main

import (
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
