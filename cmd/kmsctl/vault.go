package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/vault"
)

func newVaultCmd() *cobra.Command {
	cfg := vault.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "vault",
		Short: "Manage the Vault transit key behind kms-plugin --provider vault",
		Long: `Manage the Vault transit key that kms-plugin wraps DEKs with.

Connection flags are the plugin's own (--vault-addr, --vault-key, --vault-auth,
TLS flags...) and the VAULT_* environment variables are defaults, as for the
vault CLI. With token auth and neither VAULT_TOKEN nor --vault-token-file,
the token from "vault login" (~/.vault-token) is used.

A running plugin picks up a rotation or retirement within its
--vault-refresh-interval; no restart is needed.`,
	}
	addVaultFlags(cmd.PersistentFlags(), &cfg)

	open := func(cmd *cobra.Command) (*vault.Provider, error) { return openVault(cmd, cfg) }
	rotate := newKeyRotateCmd("Add a transit key version; it becomes the plugins' current key_id", open,
		func(k providers.Key) result {
			return vaultResult{Key: cfg.Mount + "/" + cfg.Key, KeyID: k.ID,
				Message: fmt.Sprintf("rotated %s/%s: new key_id %s", cfg.Mount, cfg.Key, k.ID)}
		})
	cmd.AddCommand(
		rotate,
		newVaultKeysCmd(&cfg),
		newVaultRetireCmd(&cfg),
		newVaultPolicyCmd(&cfg),
	)
	return cmd
}

func newVaultKeysCmd(cfg *vault.Config) *cobra.Command {
	var out output
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "List key versions, states, creation times, key_ids and min_decryption_version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := openVault(cmd, *cfg)
			if err != nil {
				return err
			}
			defer p.Close()
			st, err := p.Status(cmd.Context())
			if err != nil {
				return err
			}
			if out.structured() {
				return printData(cmd.OutOrStdout(), out, st)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "key %s/%s (%s): latest version %d, min_decryption_version %d\n\n",
				cfg.Mount, cfg.Key, st.Type, st.LatestVersion, st.MinDecryptionVersion)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tSTATE\tCREATED\tKEY_ID")
			for _, i := range st.Versions {
				// Transit does not list versions it archived on retirement.
				created, id := "-", "- (archived by transit)"
				if !i.Created.IsZero() {
					created, id = i.Created.Format(time.RFC3339), i.KeyID
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", i.Version, i.State, created, id)
			}
			return tw.Flush()
		},
	}
	addOutputFlag(cmd, &out)
	return cmd
}

func newVaultRetireCmd(cfg *vault.Config) *cobra.Command {
	return newKeyRetireCmd(
		"Set min_decryption_version to N: versions below N stop decrypting (refuses to retire the latest)",
		`Set the transit key's min_decryption_version to N, so that versions below N
no longer decrypt. Only do this after "kmsctl migrate" re-encrypted every
object and "kmsctl verify --expect-key-id <latest key_id>" passed, or the
objects still under older versions become unreadable; "kmsctl rotate
--backend vault --retire" does all three in order. N may not exceed the
latest version.`,
		func(cmd *cobra.Command) (*vault.Provider, error) { return openVault(cmd, *cfg) },
		func(below int64) result {
			return vaultResult{Key: cfg.Mount + "/" + cfg.Key, MinDecryptionVersion: below,
				Message: fmt.Sprintf("%s/%s: versions below %d are retired (min_decryption_version %d)", cfg.Mount, cfg.Key, below, below)}
		})
}

func newVaultPolicyCmd(cfg *vault.Config) *cobra.Command {
	role := vault.RolePlugin
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Print the least-privilege Vault policy (HCL) for the plugin or an operator",
		Long: `Print the least-privilege Vault policy for --vault-mount and --vault-key.

  plugin:   update on <mount>/encrypt/<key> and <mount>/decrypt/<key>,
            read on <mount>/keys/<key>
  operator: the plugin's, plus update on <mount>/keys/<key>/rotate and
            <mount>/keys/<key>/config (kmsctl vault rotate, retire)

Load it with: kmsctl vault policy --vault-key K | vault policy write kms-plugin -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Key == "" {
				return errors.New("--vault-key is required")
			}
			hcl, err := vault.Policy(role, cfg.Mount, cfg.Key)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), hcl)
			return err
		},
	}
	cmd.Flags().StringVar(&role, "role", role, "whose policy: plugin or operator")
	return cmd
}

// openVault connects with the command's flags. It falls back to the vault
// CLI's token file, as the vault CLI does.
func openVault(cmd *cobra.Command, cfg vault.Config) (*vault.Provider, error) {
	if cfg.Auth == vault.AuthToken && cfg.Token == "" && cfg.TokenFile == "" {
		if home, err := os.UserHomeDir(); err == nil {
			if f := filepath.Join(home, ".vault-token"); fileExists(f) {
				cfg.TokenFile = f
			}
		}
	}
	return vault.New(cmd.Context(), cfg, providers.Env{})
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}

// vaultResult is what vault rotate and retire print with -o json|yaml.
type vaultResult struct {
	Key                  string `json:"key"`
	KeyID                string `json:"key_id,omitempty"`
	MinDecryptionVersion int64  `json:"min_decryption_version,omitempty"`
	Message              string `json:"message"`
}

func (r vaultResult) sentence() string { return r.Message }
