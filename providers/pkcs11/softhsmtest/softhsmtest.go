// Package softhsmtest creates SoftHSM v2 tokens for tests: a private
// SOFTHSM2_CONF in a temporary directory, a token initialized there with
// softhsm2-util, and a PIN file the PKCS#11 provider accepts.
//
// Tests built with the pkcs11 tag call New; it fails (never skips) when
// SoftHSM is not installed, so that a CI run cannot pass by testing
// nothing. Install it with "apt-get install softhsm2".
package softhsmtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ModuleEnv names a SoftHSM module to use instead of the usual paths.
const ModuleEnv = "KMS_PLUGIN_SOFTHSM2_MODULE"

// modulePaths are where Debian, Ubuntu, Fedora, Alpine and Homebrew put
// libsofthsm2.so.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

// Module returns the path of libsofthsm2.so, or an error that says how to
// install it.
func Module() (string, error) {
	if m := os.Getenv(ModuleEnv); m != "" {
		if _, err := os.Stat(m); err != nil {
			return "", fmt.Errorf("%s=%s: %w", ModuleEnv, m, err)
		}
		return m, nil
	}
	for _, p := range modulePaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("libsofthsm2.so not found in %s (set %s, or install SoftHSM: apt-get install softhsm2)", strings.Join(modulePaths, ", "), ModuleEnv)
}

// Token is a SoftHSM token made for one test.
type Token struct {
	// Module is the path of libsofthsm2.so.
	Module string
	// Conf is the SoftHSM configuration file; SOFTHSM2_CONF must name it
	// in every process that uses the token (New sets it for this one).
	Conf string
	// Dir is the token directory.
	Dir string
	// Label, PIN and SOPIN are the token's label and PINs.
	Label, PIN, SOPIN string
	// PINFile holds PIN, mode 0600.
	PINFile string
}

// Env is the environment entry that points SoftHSM at this token's
// configuration, for subprocesses.
func (tk *Token) Env() string { return "SOFTHSM2_CONF=" + tk.Conf }

// New creates a token labelled label (a random one if empty) in a
// temporary directory and points SOFTHSM2_CONF at it for the rest of the
// test. It fails the test if SoftHSM is not installed.
func New(t testing.TB, label string) *Token {
	t.Helper()
	mod, err := Module()
	if err != nil {
		t.Fatalf("SoftHSM is required by the pkcs11 tests: %v", err)
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		t.Fatalf("SoftHSM is required by the pkcs11 tests: softhsm2-util not found in PATH (apt-get install softhsm2)")
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\nslots.mechanisms = ALL\nlibrary.reset_on_fork = false\n", tokens)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if label == "" {
		label = "kms-test-" + random(4)
	}
	tk := &Token{Module: mod, Conf: conf, Dir: tokens, Label: label, PIN: "user-" + random(8), SOPIN: "so-" + random(8)}
	cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--pin", tk.PIN, "--so-pin", tk.SOPIN)
	cmd.Env = append(os.Environ(), tk.Env())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token --free --label %s: %v\n%s", label, err, out)
	}
	tk.PINFile = filepath.Join(dir, "pin")
	if err := os.WriteFile(tk.PINFile, []byte(tk.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	return tk
}

// Remove moves the token's files away, as if the token were pulled out;
// the returned function puts them back.
func (tk *Token) Remove(t testing.TB) (putBack func()) {
	t.Helper()
	aside := tk.Dir + ".removed"
	if err := os.Rename(tk.Dir, aside); err != nil {
		t.Fatalf("remove token: %v", err)
	}
	return func() {
		t.Helper()
		if err := os.Rename(aside, tk.Dir); err != nil {
			t.Fatalf("put token back: %v", err)
		}
	}
}

func random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// PluginArgs are the kms-plugin and kmsctl flags that select this token
// and key label.
func (tk *Token) PluginArgs(keyLabel string) []string {
	return []string{"--pkcs11-module", tk.Module, "--pkcs11-token-label", tk.Label, "--pkcs11-pin-file", tk.PINFile, "--pkcs11-key-label", keyLabel}
}
