//go:build integration

package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

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
