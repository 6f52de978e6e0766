//go:build integration

package deploy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/test/testbin"
	"github.com/kms-plugin/kms-plugin/test/vaultserver"
)

// TestVaultSetupScriptsIdempotent runs each deploy/vault script several
// times against a real Vault through a vault CLI that writes its output in
// small chunks with pauses (test/slowpipe). A script that pipes vault into
// a reader that exits early (| grep -q, | head) under pipefail then sees
// vault die of SIGPIPE on every run, not now and then, and so fails here
// every time: the scripts must read the whole answer before matching.
func TestVaultSetupScriptsIdempotent(t *testing.T) {
	s := vaultserver.Start(t, vaultserver.Options{})
	env := slowVaultEnv(t, s)
	run := func(script string, args ...string) error {
		cmd := exec.Command("bash", append([]string{filepath.Join(testbin.RepoRoot(), "deploy", "vault", script)}, args...)...)
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s %s: %v\n%s", script, strings.Join(args, " "), err, b)
		}
		return err
	}

	// The control: through this wrapper the pattern the scripts once used
	// fails every time, so the runs below do test the race.
	for _, list := range []string{`vault secrets list -format=json | grep -q '"cubbyhole/"'`, `vault auth list -format=json | grep -q '"token/"'`} {
		for i := range 3 {
			cmd := exec.Command("bash", "-c", "set -o pipefail; "+list)
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err == nil {
				t.Fatalf("control run %d of %q passed; the slow vault wrapper no longer exposes an early-exiting reader\n%s", i+1, list, out)
			}
		}
	}

	creds := filepath.Join(t.TempDir(), "creds")
	for i := range 3 {
		if run("setup-transit.sh") != nil ||
			run("setup-transit.sh", "kms-b", "transit-b") != nil ||
			run("setup-approle.sh", creds) != nil ||
			run("setup-kubernetes-auth.sh") != nil {
			t.Fatalf("run %d of the setup scripts failed; each must be safe to re-run", i+1)
		}
	}

	// What the scripts set up is there, once.
	c := s.Client(t)
	mounts, err := c.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"transit/", "transit-b/"} {
		if mounts[m] == nil || mounts[m].Type != "transit" {
			t.Errorf("secrets mount %s = %+v, want a transit engine", m, mounts[m])
		}
	}
	auths, err := c.Sys().ListAuth()
	if err != nil {
		t.Fatal(err)
	}
	for m, typ := range map[string]string{"approle/": "approle", "kubernetes/": "kubernetes"} {
		if auths[m] == nil || auths[m].Type != typ {
			t.Errorf("auth mount %s = %+v, want %s", m, auths[m], typ)
		}
	}
	for _, path := range []string{"transit/keys/kms-plugin", "transit-b/keys/kms-b", "auth/approle/role/kms-plugin", "auth/kubernetes/role/kms-plugin"} {
		if sec, err := c.Logical().Read(path); err != nil || sec == nil {
			t.Errorf("read %s = %v, %v; want it set up", path, sec, err)
		}
	}
	for _, f := range []string{"role-id", "secret-id"} {
		if fi, err := os.Stat(filepath.Join(creds, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v; want a 0600 file", f, err)
		}
	}
}

// slowVaultEnv is an environment whose PATH has a vault that runs the real
// CLI behind test/slowpipe, and kmsctl, for the deploy/vault scripts.
func slowVaultEnv(t *testing.T, s *vaultserver.Server) []string {
	t.Helper()
	realVault := testbin.Tool(t, "vault", "vault")
	slow := testbin.Build(t, "./test/slowpipe")
	kmsctl := testbin.Build(t, "./cmd/kmsctl")
	dir := t.TempDir()
	wrapper := "#!/bin/sh\nexec '" + slow + "' -chunk 32 -pause 5ms -- '" + realVault + "' \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "vault"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(kmsctl, filepath.Join(dir, "kmsctl")); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "kubernetes-ca.crt")
	if err := os.WriteFile(ca, selfSignedCA(t), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{
		"PATH=" + dir + ":" + os.Getenv("PATH"),
		"KUBERNETES_CA=" + ca,
		"TOKEN_REVIEWER_JWT=eyJhbGciOiJub25lIn0.e30.",
		"HOME=" + t.TempDir(),
		"VAULT_ADDR=" + s.Addr,
		"VAULT_TOKEN=" + s.RootToken,
		"KUBERNETES_HOST=https://127.0.0.1:6443",
	}
}

// selfSignedCA is a PEM CA certificate for the Kubernetes auth config,
// which Vault parses but, with no login attempted, never uses.
func selfSignedCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kubernetes-test-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
