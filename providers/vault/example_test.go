package vault_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/vault"
)

// The plugin's least-privilege policy for transit key "kms-plugin".
func ExamplePolicy() {
	hcl, err := vault.Policy(vault.RolePlugin, "transit", "kms-plugin")
	if err != nil {
		panic(err)
	}
	fmt.Println(hcl)
	// Output:
	// # kms-plugin: the KMS plugin's policy for transit key "kms-plugin" at mount "transit".
	// # No "create": encrypting must never recreate a deleted key.
	//
	// # Wrap DEK seeds.
	// path "transit/encrypt/kms-plugin" {
	//   capabilities = ["update"]
	// }
	//
	// # Unwrap DEK seeds.
	// path "transit/decrypt/kms-plugin" {
	//   capabilities = ["update"]
	// }
	//
	// # Read versions and creation times (key_id) and min_decryption_version.
	// path "transit/keys/kms-plugin" {
	//   capabilities = ["read"]
	// }
}

// A provider that logs in with AppRole; VAULT_ADDR and VAULT_CACERT from
// the environment are defaults.
func ExampleNew() {
	cfg := vault.DefaultConfig()
	cfg.Key = "kms-plugin"
	cfg.Auth = vault.AuthAppRole
	cfg.RoleIDFile = "/etc/kubernetes/kms-plugin/vault/role-id"
	cfg.SecretIDFile = "/etc/kubernetes/kms-plugin/vault/secret-id"
	p, err := vault.New(context.Background(), cfg, providers.Env{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	key, err := p.Current()
	fmt.Println(key.ID, err)
}
