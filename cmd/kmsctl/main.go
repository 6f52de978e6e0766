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
		os.Exit(1)
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
	return root
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
