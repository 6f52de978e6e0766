package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/local"
)

func newKeyringCmd() *cobra.Command {
	var (
		path    string
		initOut output
	)
	cmd := &cobra.Command{
		Use:   "keyring",
		Short: "Manage a local provider keyring file",
		Long: `Manage the keyring file of kms-plugin's local provider.

Every change is written atomically (temporary file, fsync, rename) under a
lock, and a running plugin picks it up within its --keyring-reload-interval.

On an HA control plane every node must hold the same keys, so never run
"add" or "rotate" on more than one node: each run makes fresh random key
bytes. Rotate in two phases instead:

  1. "add" on ONE node;
  2. copy that keyring file to every other node (keep owner and mode 0600);
  3. once every plugin has loaded it ("kmsctl status" on each node shows
     the new version with the same CHECK), "promote" on every node.

"kmsctl rotate --backend local" does all of this, and refuses to promote
while any node's keyring or plugin differs. A key_id carries the key's
check value, so two different keys never share a key_id.`,
	}
	cmd.PersistentFlags().StringVar(&path, "keyring", "", "path of the keyring file (required)")
	_ = cmd.MarkPersistentFlagRequired("keyring")

	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create a keyring with one primary version (mode 0600); never overwrites",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := local.NewKeyring(time.Now())
			if err != nil {
				return err
			}
			if err := local.Create(path, k); err != nil {
				return err
			}
			v := k.Primary()
			return printResult(cmd, initOut, keyringResult{
				Keyring: path, Version: v.Version, KeyID: k.KeyID(v.Version), State: v.State, Check: v.Check,
				Message: fmt.Sprintf("created keyring %s with primary key %s", path, k.KeyID(v.Version)),
			})
		},
	}
	addOutputFlag(initCmd, &initOut)
	cmd.AddCommand(
		initCmd,
		keyringChange(&path, "rotate", "Add a version and make it primary; prints the new key_id",
			func(k *local.Keyring) (keyringResult, error) {
				v, err := k.Rotate(time.Now())
				if err != nil {
					return keyringResult{}, err
				}
				return resultOf(k, v.Version, k.KeyID(v.Version)), nil
			}),
		keyringChange(&path, "add", "Add a version that decrypts but does not encrypt yet (phase 1 of an HA rotation: on one node, then copy the file)",
			func(k *local.Keyring) (keyringResult, error) {
				v, err := k.Add(time.Now())
				if err != nil {
					return keyringResult{}, err
				}
				return resultOf(k, v.Version, fmt.Sprintf("%s (version %d, active; copy this file to every other node, then promote it with --version %d everywhere)", k.KeyID(v.Version), v.Version, v.Version)), nil
			}),
		keyringVersionChange(&path, "promote", "Make a version primary (phase 2 of an HA rotation)", (*local.Keyring).Promote),
		keyringVersionChange(&path, "retire", "Retire a version: it no longer decrypts (refuses the primary)", (*local.Keyring).Retire),
		keyringVersionChange(&path, "reactivate", "Make a retired version decrypt again (undoes retire)", (*local.Keyring).Reactivate),
		keyringChangeWithVersion(&path, "prune", "Delete a retired version's key for good (cannot be undone)",
			func(k *local.Keyring, v int64) (keyringResult, error) {
				id := k.KeyID(v)
				if err := k.Prune(v); err != nil {
					return keyringResult{}, err
				}
				return resultOf(k, v, fmt.Sprintf("%s: version %d's key deleted (its number stays used); copies of the keyring made earlier still hold it", id, v)), nil
			}),
		newKeyringListCmd(&path),
	)
	return cmd
}

// keyringResult is what a keyring command that changes the file prints:
// the version it acted on, and a sentence for the table output.
type keyringResult struct {
	Keyring string             `json:"keyring"`
	Version int64              `json:"version"`
	KeyID   string             `json:"key_id"`
	State   providers.KeyState `json:"state"`
	Check   string             `json:"check,omitempty"`
	Message string             `json:"message"`
}

func (r keyringResult) sentence() string { return r.Message }

// resultOf describes version v of k after a change.
func resultOf(k *local.Keyring, v int64, msg string) keyringResult {
	r := keyringResult{Version: v, KeyID: k.KeyID(v), Message: msg}
	if ver := k.Find(v); ver != nil {
		r.State, r.Check = ver.State, ver.Check
	}
	return r
}

// keyringChange builds a command that applies change to the keyring file
// and prints what change returns (-o for json or yaml).
func keyringChange(path *string, use, short string, change func(*local.Keyring) (keyringResult, error)) *cobra.Command {
	var out output
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var r keyringResult
			_, err := local.Update(*path, func(k *local.Keyring) error {
				var err error
				r, err = change(k)
				return err
			})
			if err != nil {
				return err
			}
			r.Keyring = *path
			return printResult(cmd, out, r)
		},
	}
	addOutputFlag(cmd, &out)
	return cmd
}

// keyringVersionChange builds a command that changes one version's state.
func keyringVersionChange(path *string, use, short string, change func(*local.Keyring, int64) error) *cobra.Command {
	return keyringChangeWithVersion(path, use, short, func(k *local.Keyring, v int64) (keyringResult, error) {
		if err := change(k, v); err != nil {
			return keyringResult{}, err
		}
		return resultOf(k, v, fmt.Sprintf("%s: version %d is now %s", k.KeyID(v), v, k.Find(v).State)), nil
	})
}

// keyringChangeWithVersion builds a command with a required --version that
// applies change to the keyring file and prints what change returns.
func keyringChangeWithVersion(path *string, use, short string, change func(*local.Keyring, int64) (keyringResult, error)) *cobra.Command {
	var version int64
	cmd := keyringChange(path, use, short, func(k *local.Keyring) (keyringResult, error) {
		if k.Find(version) == nil {
			var have []string
			for _, v := range k.Versions {
				have = append(have, strconv.FormatInt(v.Version, 10))
			}
			return keyringResult{}, fmt.Errorf("version %d does not exist (versions: %s)", version, strings.Join(have, ", "))
		}
		return change(k, version)
	})
	cmd.Flags().Int64Var(&version, "version", 0, "key version (required)")
	_ = cmd.MarkFlagRequired("version")
	return cmd
}

func newKeyringListCmd(path *string) *cobra.Command {
	var out output
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List versions, states, creation times and key_ids (never key bytes)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := local.LoadAsOperator(*path)
			if err != nil {
				return err
			}
			return printKeyInfos(cmd, out, k.Infos())
		},
	}
	addOutputFlag(cmd, &out)
	return cmd
}

// printKeyInfos prints key versions as a table or JSON.
func printKeyInfos(cmd *cobra.Command, out output, infos []providers.KeyInfo) error {
	if out.structured() {
		return printData(cmd.OutOrStdout(), out, infos)
	}
	return writeKeyInfos(cmd.OutOrStdout(), infos)
}

// writeKeyInfos writes key versions as a table.
func writeKeyInfos(w io.Writer, infos []providers.KeyInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tCREATED\tCHECK\tKEY_ID")
	for _, i := range infos {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i.Version, i.State, i.Created.Format(time.RFC3339), dash(i.Check), i.KeyID)
	}
	return tw.Flush()
}
