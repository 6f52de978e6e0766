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
	"regexp"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/kms-plugin/kms-plugin/kms"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmsctl:", operatorMessage(err))
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
	// --version without -v: -v means --verbose wherever a command has it.
	root.Flags().Bool("version", false, "print kmsctl's version")
	root.AddCommand(newKeyringCmd(), newStatusCmd(), newVaultCmd(), newPKCS11Cmd(), newBenchCmd(), newConformanceCmd())
	root.AddCommand(newVerifyCmd(), newMigrateCmd(), newRotateCmd(), newDoctorCmd())
	refuseUnknownSubcommands(root)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return flagError(err) })
	return root
}

// Sentinel words that errors carry for errors.Is and the gRPC mapping, and
// that mean nothing more to a person at the end of a sentence that already
// says what is wrong.
var sentinelSuffixes = []string{": invalid argument", ": key retired", ": provider not configured"}

var rpcText = regexp.MustCompile(`rpc error: code = (\w+) desc = `)

// operatorMessage is err as kmsctl prints it: without a trailing sentinel
// word and with gRPC's framing reduced to the code.
func operatorMessage(err error) string {
	msg := rpcText.ReplaceAllString(err.Error(), "$1: ")
	for _, s := range sentinelSuffixes {
		msg = strings.TrimSuffix(msg, s)
	}
	return msg
}

var flagValueError = regexp.MustCompile(`^invalid argument "(.*)" for "(.*)" flag: (?:strconv\.Parse(\w+)|time\.ParseDuration)?.*?(invalid syntax|value out of range|invalid duration.*)?$`)

// flagError rewrites pflag's parse errors, which quote Go's strconv
// messages, into what the flag wants.
func flagError(err error) error {
	m := flagValueError.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	want := "a valid value"
	switch {
	case strings.HasPrefix(m[3], "Int") || strings.HasPrefix(m[3], "Uint"):
		want = "a whole number"
	case strings.HasPrefix(m[3], "Float"):
		want = "a number"
	case m[3] == "Bool":
		want = "true or false"
	case strings.HasPrefix(m[4], "invalid duration") || strings.Contains(err.Error(), "time: "):
		want = "a duration such as 30s or 5m"
	}
	if m[4] == "value out of range" {
		want += " in range"
	}
	return fmt.Errorf("%s %q: want %s", m[2], m[1], want)
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

// output is the -o flag shared by commands that print a result: table
// for people, json or yaml (the same fields) for scripts.
type output string

// structured reports whether the output is for a program (json or yaml).
func (o output) structured() bool { return o == "json" || o == "yaml" }

func addOutputFlag(cmd *cobra.Command, o *output) {
	*o = "table"
	cmd.Flags().VarP((*outputValue)(o), "output", "o", "output format: table, json or yaml")
}

type outputValue output

func (v *outputValue) String() string { return string(*v) }
func (v *outputValue) Type() string   { return "format" }
func (v *outputValue) Set(s string) error {
	switch s {
	case "table", "json", "yaml":
		*v = outputValue(s)
		return nil
	}
	return fmt.Errorf("want table, json or yaml, got %q", s)
}

// result is what a command that changes something prints: a sentence
// for a person, or the whole value as JSON or YAML.
type result interface{ sentence() string }

// printResult prints r as out says.
func printResult(cmd *cobra.Command, out output, r result) error {
	if out.structured() {
		return printData(cmd.OutOrStdout(), out, r)
	}
	_, err := fmt.Fprintln(cmd.OutOrStdout(), r.sentence())
	return err
}

// printData writes v as JSON or YAML, as out says.
func printData(w io.Writer, out output, v any) error {
	if out == "yaml" {
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return printJSON(w, v)
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
