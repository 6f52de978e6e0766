// Command kmsctl is kms-plugin's operator CLI: it manages local keyrings and
// Vault transit keys, and asks any KMS v2 plugin for its status.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kms-plugin/kms-plugin/kms"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmsctl:", err)
		os.Exit(exitCode(err))
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "kmsctl",
		Short:         "Operate kms-plugin: keyrings, Vault keys and plugin status",
		Version:       kms.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newKeyringCmd(), newStatusCmd(), newVaultCmd(), newBenchCmd(), newConformanceCmd())
	root.AddCommand(newVerifyCmd(), newMigrateCmd(), newRotateCmd())
	refuseUnknownSubcommands(root)
	return root
}

// refuseUnknownSubcommands makes every command group (a command with
// subcommands and no action of its own) fail on an argument that names no
// subcommand, suggesting the closest ones, instead of printing its help
// and exiting 0: "kmsctl keyring lsit" must not look like success.
func refuseUnknownSubcommands(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		refuseUnknownSubcommands(c)
	}
	if !cmd.HasSubCommands() || cmd.Runnable() {
		return
	}
	// Args run before required flags are checked, so the mistyped name is
	// what gets reported.
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if cmd.SuggestionsMinimumDistance <= 0 {
			cmd.SuggestionsMinimumDistance = 2
		}
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return fmt.Errorf("%s (see %s --help)", msg, cmd.CommandPath())
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
}

// output is the -o flag shared by commands that print data.
type output string

func addOutputFlag(cmd *cobra.Command, o *output) {
	*o = "table"
	cmd.Flags().VarP((*outputValue)(o), "output", "o", "output format: table or json")
}

type outputValue output

func (v *outputValue) String() string { return string(*v) }
func (v *outputValue) Type() string   { return "format" }
func (v *outputValue) Set(s string) error {
	if s != "table" && s != "json" {
		return fmt.Errorf("want table or json, got %q", s)
	}
	*v = outputValue(s)
	return nil
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
