package pkcs11

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kms-plugin/kms-plugin/providers"
)

func validConfig(t *testing.T) Config {
	c := DefaultConfig()
	c.Module = "/usr/lib/softhsm/libsofthsm2.so"
	c.TokenLabel = "kms"
	c.PINFile = filepath.Join(t.TempDir(), "pin")
	return c
}

func TestConfigValidate(t *testing.T) {
	if err := validConfig(t).Validate(); err != nil {
		t.Fatalf("Validate(valid) = %v", err)
	}
	cases := map[string]struct {
		change func(*Config)
		want   string
	}{
		"no module":        {func(c *Config) { c.Module = "" }, "--pkcs11-module is required"},
		"no token":         {func(c *Config) { c.TokenLabel = "" }, "one of --pkcs11-token-label and --pkcs11-slot"},
		"token twice":      {func(c *Config) { c.Slot = 0 }, "give only one"},
		"long token label": {func(c *Config) { c.TokenLabel = strings.Repeat("x", 33) }, "at most 32"},
		"no pin file":      {func(c *Config) { c.PINFile = "" }, "--pkcs11-pin-file is required"},
		"key label colon":  {func(c *Config) { c.KeyLabel = "a:b" }, "only letters"},
		"key label slash":  {func(c *Config) { c.KeyLabel = "a/b" }, "only letters"},
		"empty key label":  {func(c *Config) { c.KeyLabel = "" }, "1..64"},
		"zero refresh":     {func(c *Config) { c.RefreshInterval = 0 }, "must be positive"},
		"no sessions":      {func(c *Config) { c.Sessions = 0 }, "--pkcs11-sessions"},
	}
	for name, tc := range cases {
		c := validConfig(t)
		tc.change(&c)
		err := c.Validate()
		if !errors.Is(err, providers.ErrNotConfigured) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want ErrNotConfigured containing %q", name, err, tc.want)
		}
	}
	c := validConfig(t)
	c.TokenLabel, c.Slot = "", 3
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(slot only) = %v", err)
	}
}

func TestFlags(t *testing.T) {
	c := DefaultConfig()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	c.RegisterFlags(fs)
	err := fs.Parse([]string{"--pkcs11-module", "/m.so", "--pkcs11-token-label", "t", "--pkcs11-pin-file", "/p", "--pkcs11-key-label", "k", "--pkcs11-slot", "2"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Module != "/m.so" || c.TokenLabel != "t" || c.PINFile != "/p" || c.KeyLabel != "k" || c.Slot != 2 {
		t.Errorf("flags parsed into %+v", c)
	}
	if fs.Lookup("pkcs11-pin") != nil {
		t.Error("a --pkcs11-pin flag exists; the PIN must never be a flag")
	}
}

func TestReadPIN(t *testing.T) {
	dir := t.TempDir()
	pin := "s3cr3t-pin-4711"
	f := filepath.Join(dir, "pin")
	if err := os.WriteFile(f, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := readPIN(f, false); err != nil || got != pin {
		t.Fatalf("readPIN = %q, %v", got, err)
	}
	check := func(name string, err error, want string) {
		t.Helper()
		if err == nil || !errors.Is(err, providers.ErrNotConfigured) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: readPIN = %v, want ErrNotConfigured containing %q", name, err, want)
		}
		if err != nil && strings.Contains(err.Error(), pin) {
			t.Errorf("%s: error contains the PIN: %v", name, err)
		}
	}
	if err := os.Chmod(f, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := readPIN(f, false)
	check("world-readable", err, "chmod 600")
	_, err = readPIN(dir, false)
	check("directory", err, "not a regular file")
	_, err = readPIN(filepath.Join(dir, "missing"), false)
	check("missing", err, "no such file")
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = readPIN(empty, false)
	check("empty", err, "is empty")
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, maxPINFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = readPIN(big, false)
	check("big", err, "larger than")
}
