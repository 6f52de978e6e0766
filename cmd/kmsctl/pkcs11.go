//go:build pkcs11

package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/pkcs11"
	"github.com/kms-plugin/kms-plugin/rotation"
)

func newPKCS11Cmd() *cobra.Command {
	cfg := pkcs11.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "pkcs11",
		Short: "Manage the key in a PKCS#11 token behind kms-plugin --provider pkcs11",
		Long: `Manage the AES-256 key, inside a PKCS#11 token, that kms-plugin wraps DEKs with.

The flags are the plugin's own (--pkcs11-module, --pkcs11-token-label or
--pkcs11-slot, --pkcs11-pin-file, --pkcs11-key-label). Version N of the key
is the token object "<key label>-v<N>"; "rotate" on a token that has none
generates version 1.

A running plugin picks up a rotation or retirement within its
--pkcs11-refresh-interval; no restart is needed.`,
	}
	addPKCS11Flags(cmd.PersistentFlags(), &cfg)

	open := func(cmd *cobra.Command) (*pkcs11.Provider, error) { return openPKCS11(cmd, cfg) }
	rotate := newKeyRotateCmd("Generate the next key version on the token; it becomes the plugins' current key_id", open,
		func(k providers.Key) result {
			return pkcs11Result{Key: cfg.KeyLabel, KeyID: k.ID,
				Message: fmt.Sprintf("generated a new version of %s: new key_id %s", cfg.KeyLabel, k.ID)}
		})
	cmd.AddCommand(rotate, newPKCS11KeysCmd(&cfg), newPKCS11RetireCmd(&cfg))
	return cmd
}

// pkcs11Status is what kmsctl pkcs11 keys prints with -o json|yaml.
type pkcs11Status struct {
	Token    pkcs11.TokenInfo    `json:"token"`
	Key      string              `json:"key_label"`
	Versions []providers.KeyInfo `json:"versions"`
}

func newPKCS11KeysCmd(cfg *pkcs11.Config) *cobra.Command {
	var out output
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "List the key's versions on the token: states, creation days, check values, key_ids",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := openPKCS11(cmd, *cfg)
			if err != nil {
				return err
			}
			defer p.Close()
			infos, err := p.Keys(cmd.Context())
			if err != nil {
				return err
			}
			tok, err := p.Token()
			if err != nil {
				return err
			}
			st := pkcs11Status{Token: tok, Key: cfg.KeyLabel, Versions: infos}
			if out.structured() {
				return printData(cmd.OutOrStdout(), out, st)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "token %q (%s %s, serial %s, slot %d), key %s: %d versions\n\n",
				tok.Label, tok.Manufacturer, tok.Model, tok.Serial, tok.Slot, cfg.KeyLabel, len(infos))
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tSTATE\tCREATED\tCHECK\tKEY_ID")
			for _, i := range infos {
				created := "-"
				if !i.Created.IsZero() {
					created = i.Created.Format(time.DateOnly)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i.Version, i.State, created, i.Check, i.KeyID)
			}
			return tw.Flush()
		},
	}
	addOutputFlag(cmd, &out)
	return cmd
}

func newPKCS11RetireCmd(cfg *pkcs11.Config) *cobra.Command {
	return newKeyRetireCmd(
		"Stop decrypting with the versions below N (clears CKA_DECRYPT; refuses the current version)",
		`Retire every version below N: the token is told (CKA_DECRYPT false) to
refuse decrypting with them. Only do this after "kmsctl migrate" re-encrypted
every object and "kmsctl verify --expect-key-id <current key_id>" passed, or
the objects still under older versions become unreadable; "kmsctl rotate
--backend pkcs11 --retire" does all three in order. N may not exceed the
current version.`,
		func(cmd *cobra.Command) (*pkcs11.Provider, error) { return openPKCS11(cmd, *cfg) },
		func(below int64) result {
			return pkcs11Result{Key: cfg.KeyLabel, RetiredBelow: below,
				Message: fmt.Sprintf("%s: versions below %d are retired", cfg.KeyLabel, below)}
		})
}

// openPKCS11 opens the token as an operator: a token without any version
// may be opened, and root may read the plugin user's PIN file.
func openPKCS11(cmd *cobra.Command, cfg pkcs11.Config) (*pkcs11.Provider, error) {
	return pkcs11.New(cmd.Context(), cfg.ForOperator(), providers.Env{})
}

// openPKCS11Backend is kmsctl rotate --backend pkcs11's backend.
func openPKCS11Backend(cmd *cobra.Command, cfg pkcs11.Config) (rotation.Backend, func(), error) {
	p, err := openPKCS11(cmd, cfg)
	if err != nil {
		return nil, nil, err
	}
	b := &rotation.ProviderBackend{Key: p, Name: fmt.Sprintf("pkcs11 key %s on token %s", cfg.KeyLabel, tokenDesc(cfg))}
	return b, func() { _ = p.Close() }, nil
}

func tokenDesc(cfg pkcs11.Config) string {
	if cfg.TokenLabel != "" {
		return fmt.Sprintf("%q", cfg.TokenLabel)
	}
	return fmt.Sprintf("in slot %d", cfg.Slot)
}

// pkcs11Result is what pkcs11 rotate and retire print with -o json|yaml.
type pkcs11Result struct {
	Key          string `json:"key_label"`
	KeyID        string `json:"key_id,omitempty"`
	RetiredBelow int64  `json:"retired_below,omitempty"`
	Message      string `json:"message"`
}

func (r pkcs11Result) sentence() string { return r.Message }
