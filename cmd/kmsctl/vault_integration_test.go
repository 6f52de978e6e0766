//go:build integration

package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/vault"
	"github.com/kms-plugin/kms-plugin/test/vaultserver"
)

// TestVaultCommandsAgainstVault runs rotate, keys and retire against a
// real Vault while a provider (as in a running plugin) serves: the
// rotation reaches the provider's current key_id without a restart.
func TestVaultCommandsAgainstVault(t *testing.T) {
	// Start Vault before clearVaultEnv moves HOME: the tools cache lives
	// under the real one.
	s := vaultserver.StartTransit(t, vaultserver.Options{}, "transit", "kms")
	clearVaultEnv(t)
	t.Setenv("VAULT_ADDR", s.Addr)
	t.Setenv("VAULT_TOKEN", s.RootToken)

	cfg := vault.DefaultConfig()
	cfg.Key, cfg.RefreshInterval = "kms", 200*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	plugin, err := vault.New(ctx, cfg, providers.Env{})
	if err != nil {
		t.Fatal(err)
	}
	defer plugin.Close()
	k1, _ := plugin.Current()
	ct, err := plugin.Encrypt(ctx, k1, []byte("old"), nil)
	if err != nil {
		t.Fatal(err)
	}

	out, err := vaultctl(t, "rotate", "--vault-key", "kms")
	if err != nil || !strings.Contains(out, "vault:transit/kms:v2:") {
		t.Fatalf("kmsctl vault rotate = %q, %v; want the v2 key_id", out, err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if k, _ := plugin.Current(); string(k.Ref) == "2" && strings.Contains(out, k.ID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the running provider never saw the rotation")
		}
	}
	if got, err := plugin.Decrypt(ctx, k1, ct, nil); err != nil || string(got) != "old" {
		t.Errorf("Decrypt(old ciphertext) after rotate = %q, %v", got, err)
	}

	if _, err := vaultctl(t, "retire", "--below", "3", "--vault-key", "kms"); err == nil {
		t.Errorf("kmsctl vault retire --below 3 with latest 2 succeeded")
	}
	if out, err := vaultctl(t, "retire", "--below", "2", "--vault-key", "kms"); err != nil {
		t.Fatalf("kmsctl vault retire --below 2 = %q, %v", out, err)
	}

	out, err = vaultctl(t, "keys", "-o", "json", "--vault-key", "kms")
	if err != nil {
		t.Fatalf("kmsctl vault keys -o json = %v", err)
	}
	var st vault.KeyStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("keys -o json output %q: %v", out, err)
	}
	k2, _ := plugin.Current()
	if st.LatestVersion != 2 || st.MinDecryptionVersion != 2 || len(st.Versions) != 2 ||
		st.Versions[0].Version != 1 || st.Versions[0].State != providers.StateRetired ||
		st.Versions[1].State != providers.StatePrimary || st.Versions[1].KeyID != k2.ID {
		t.Errorf("keys -o json = %+v; want v1 retired and v2 primary (%s), min_decryption_version 2", st, k2.ID)
	}
	out, err = vaultctl(t, "keys", "--vault-key", "kms")
	if err != nil || !strings.Contains(out, "min_decryption_version 2") || !strings.Contains(out, k2.ID) {
		t.Errorf("kmsctl vault keys = %q, %v", out, err)
	}
	if _, err := plugin.Decrypt(ctx, k1, ct, nil); !providers.IsRevocation(err) {
		t.Errorf("Decrypt(retired) = %v, want a revocation-class error", err)
	}
}

// TestDoctorChecksVault runs kmsctl doctor's Vault checks against a real
// Vault with three tokens: root (more than the plugin needs: a warning),
// one with exactly the plugin policy (every check passes), and one that
// may encrypt but not decrypt (a failure, and a non-zero exit).
func TestDoctorChecksVault(t *testing.T) {
	s := vaultserver.StartTransit(t, vaultserver.Options{}, "transit", "kms")
	clearVaultEnv(t)
	t.Setenv("ETCDCTL_ENDPOINTS", "")
	t.Setenv("KUBECONFIG", "")
	t.Setenv("VAULT_ADDR", s.Addr)
	cfg := encryptionConfig(t, "kms-plugin", serveLocal(t))
	root := s.Client(t)
	token := func(policy, hcl string) string {
		t.Helper()
		s.WritePolicy(t, policy, hcl)
		tok, err := root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{policy}, TTL: "2h"})
		if err != nil {
			t.Fatal(err)
		}
		return tok.Auth.ClientToken
	}
	doctor := func(tok string) (doctorReport, error) {
		t.Helper()
		t.Setenv("VAULT_TOKEN", tok)
		out, err := kmsctl("doctor", "--encryption-config", cfg, "--interval", "50ms", "--vault-key", "kms", "-o", "json")
		var rep doctorReport
		if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
			t.Fatalf("doctor -o json: %v\n%s", jerr, out)
		}
		return rep, err
	}
	result := func(rep doctorReport, name string) check {
		for _, c := range rep.Checks {
			if c.Check == name {
				return c
			}
		}
		t.Fatalf("no %q check in %+v", name, rep)
		return check{}
	}

	rep, err := doctor(s.RootToken)
	if err != nil {
		t.Fatalf("doctor with the root token = %v (warnings must not fail it): %+v", err, rep)
	}
	if c := result(rep, "vault policy"); c.Result != checkWarn || !strings.Contains(c.Detail, "root") {
		t.Errorf("root token: policy check %+v, want a warning naming root", c)
	}
	if c := result(rep, "vault transit/kms"); c.Result != checkPass || !strings.Contains(c.Detail, "vault:transit/kms:v1:") {
		t.Errorf("vault check %+v, want PASS with the key_id", c)
	}

	hcl, err := vault.Policy(vault.RolePlugin, "transit", "kms")
	if err != nil {
		t.Fatal(err)
	}
	rep, err = doctor(token("kms-plugin", hcl))
	if err != nil || rep.Warned != 0 {
		t.Fatalf("doctor with the plugin policy = %v, %+v; want every check to pass", err, rep)
	}
	if c := result(rep, "vault token"); c.Result != checkPass || !strings.Contains(c.Detail, "expires in 1h59m") && !strings.Contains(c.Detail, "expires in 2h") {
		t.Errorf("token check %+v, want PASS with about 2h left", c)
	}

	rep, err = doctor(token("encrypt-only", `path "transit/encrypt/kms" { capabilities = ["update"] }
path "transit/keys/kms" { capabilities = ["read"] }`))
	if err == nil {
		t.Fatalf("doctor with a token that cannot decrypt succeeded: %+v", rep)
	}
	if c := result(rep, "vault policy"); c.Result != checkFail || !strings.Contains(c.Detail, "transit/decrypt/kms: update") {
		t.Errorf("policy check %+v, want FAIL naming the missing decrypt", c)
	}
}
