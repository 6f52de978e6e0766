package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/kms-plugin/kms-plugin/providers/vault"
)

// vaultctl runs "kmsctl vault ..." in process with a clean VAULT_*
// environment and returns stdout and the error.
func vaultctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"vault"}, args...))
	err := root.Execute()
	return out.String(), err
}

func clearVaultEnv(t *testing.T) {
	for _, v := range []string{"VAULT_ADDR", "VAULT_TOKEN", "VAULT_NAMESPACE", "VAULT_CACERT", "VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY", "VAULT_TLS_SERVER_NAME", "VAULT_SKIP_VERIFY"} {
		t.Setenv(v, "")
	}
	t.Setenv("HOME", t.TempDir()) // no ~/.vault-token
}

func TestVaultPolicyCommand(t *testing.T) {
	clearVaultEnv(t)
	tests := []struct {
		name  string
		args  []string
		role  string
		mount string
	}{
		{"plugin by default", []string{"policy", "--vault-key", "k8s"}, vault.RolePlugin, "transit"},
		{"operator", []string{"policy", "--role", "operator", "--vault-key", "k8s"}, vault.RoleOperator, "transit"},
		{"other mount", []string{"policy", "--vault-mount", "kms/transit", "--vault-key", "k8s"}, vault.RolePlugin, "kms/transit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := vaultctl(t, tc.args...)
			if err != nil {
				t.Fatalf("kmsctl vault %s = %v", strings.Join(tc.args, " "), err)
			}
			want, err := vault.Policy(tc.role, tc.mount, "k8s")
			if err != nil {
				t.Fatal(err)
			}
			if out != want+"\n" {
				t.Errorf("kmsctl vault %s printed\n%s\nwant\n%s", strings.Join(tc.args, " "), out, want)
			}
		})
	}
}

func TestVaultCommandErrors(t *testing.T) {
	clearVaultEnv(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"policy without key", []string{"policy"}, "--vault-key"},
		{"policy with unknown role", []string{"policy", "--role", "admin", "--vault-key", "k"}, "admin"},
		{"retire without --below", []string{"retire", "--vault-key", "k"}, "below"},
		{"keys without address", []string{"keys", "--vault-key", "k"}, "--vault-addr"},
		{"rotate without token", []string{"rotate", "--vault-addr", "http://127.0.0.1:1", "--vault-key", "k"}, "VAULT_TOKEN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := vaultctl(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("kmsctl vault %s = %v, want an error mentioning %q", strings.Join(tc.args, " "), err, tc.want)
			}
		})
	}
}
