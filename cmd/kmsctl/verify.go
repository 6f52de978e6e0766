package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kms-plugin/kms-plugin/rotation/progress"
	"github.com/kms-plugin/kms-plugin/rotation/verify"
)

func newVerifyCmd() *cobra.Command {
	var (
		ef           etcdFlags
		rf           resourceFlags
		expect       verify.Expect
		out          output
		pageSize     int64
		maxOffenders int
		quiet        bool
		allowEmpty   bool
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Audit how every stored object is encrypted in etcd (read-only)",
		Long: `Read every value of the given resources from etcd and say how it is
protected: identity (plaintext), aescbc, aesgcm or secretbox with the key
name, KMS v1 with the provider name, KMS v2 with the provider name and the
key_id stored in its EncryptedObject.

Prints counts by resource, provider and key_id; -o json prints every object
too. With --expect-provider or --expect-key-id, exits non-zero and names the
objects that fail. Only reads, in pages of --page-size values.

Built-in resources live under <etcd-prefix>/<resource>/ (services under
services/specs, nodes under minions, ...), other groups under
<etcd-prefix>/<group>/<resource>/; a resource starting with "/" is taken as
an etcd key prefix as it is.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resources, err := rf.list()
			if err != nil {
				return err
			}
			client, err := ef.client()
			if err != nil {
				return err
			}
			defer client.Close()
			stderr := cmd.ErrOrStderr()
			if quiet {
				stderr = io.Discard
			}
			return runVerify(cmd.Context(), client, cmd.OutOrStdout(), stderr, verify.Options{
				EtcdPrefix: ef.prefix, Resources: resources, PageSize: pageSize,
				Expect: expect, MaxOffenders: maxOffenders,
			}, out, allowEmpty)
		},
	}
	ef.register(cmd)
	rf.register(cmd)
	cmd.Flags().StringSliceVar(&expect.Providers, "expect-provider", nil, "every object must be written by this kms provider name (or be of this type: identity, aescbc, ...)")
	cmd.Flags().StringSliceVar(&expect.KeyIDs, "expect-key-id", nil, "every object must be KMS v2 under this key_id (repeat to accept several)")
	cmd.Flags().Int64Var(&pageSize, "page-size", 500, "values per etcd range read")
	cmd.Flags().IntVar(&maxOffenders, "max-offenders", 100, "offenders named in table output (-o json lists all)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress on stderr")
	cmd.Flags().BoolVar(&allowEmpty, "allow-empty", false, "succeed even if a resource has no object in etcd (by default that fails: a mistyped resource or --etcd-prefix checks nothing)")
	addOutputFlag(cmd, &out)
	return cmd
}

// runVerify scans and prints. With -o json it streams
// {"objects":[...],"summary":[...],"total":N,"offender_count":N} so that
// memory stays bounded.
func runVerify(ctx context.Context, kv verify.KV, stdout, stderr io.Writer, opts verify.Options, out output, allowEmpty bool) error {
	meter := progress.New(stderr, "verify")
	var last int64
	opts.Progress = func(_ string, scanned int64) {
		if scanned < last {
			last = 0
		}
		meter.Add(scanned - last)
		last = scanned
	}
	first := true
	var objects []verify.Object // for yaml, which cannot stream
	switch out {
	case "json":
		fmt.Fprint(stdout, `{"objects":[`)
		opts.Each = func(o verify.Object) error {
			b, err := json.Marshal(o)
			if err != nil {
				return err
			}
			if !first {
				fmt.Fprint(stdout, ",")
			}
			first = false
			_, err = fmt.Fprintf(stdout, "\n%s", b)
			return err
		}
		opts.MaxOffenders = -1 // every offender is in "objects" already
	case "yaml":
		opts.Each = func(o verify.Object) error { objects = append(objects, o); return nil }
		opts.MaxOffenders = -1
	}
	rep, err := verify.Scan(ctx, kv, opts)
	meter.Done()
	if err != nil {
		return err
	}
	switch out {
	case "json":
		rep.Offenders = nil
		tail, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		// Splice the report's fields after "objects".
		fmt.Fprintf(stdout, "\n],%s\n", strings.TrimPrefix(string(tail), "{"))
	case "yaml":
		rep.Offenders = nil
		if err := printData(stdout, out, verifyYAML{Objects: objects, Report: rep}); err != nil {
			return err
		}
	default:
		printVerifyTable(stdout, rep, opts.Expect)
	}
	if err := rep.Err(); err != nil {
		return err
	}
	if empty := emptyResources(opts.Resources, rep); len(empty) > 0 {
		fmt.Fprintf(stderr, "warning: no object in etcd under %s for %s\n", opts.EtcdPrefix, strings.Join(empty, ", "))
		if !allowEmpty {
			return fmt.Errorf("verify checked no object of %s under --etcd-prefix %s: a mistyped resource or prefix proves nothing (pass --allow-empty if none exist)",
				strings.Join(empty, ", "), opts.EtcdPrefix)
		}
	}
	return nil
}

// verifyYAML is verify -o yaml: the objects, then the report's fields, as
// -o json streams them.
type verifyYAML struct {
	Objects []verify.Object `json:"objects"`
	verify.Report
}

// emptyResources lists the resources of which the scan found no object.
func emptyResources(resources []string, rep verify.Report) []string {
	seen := map[string]bool{}
	for _, c := range rep.Counts {
		if c.Objects > 0 {
			seen[c.Resource] = true
		}
	}
	var empty []string
	for _, r := range resources {
		if !seen[r] {
			empty = append(empty, r)
		}
	}
	return empty
}

func printVerifyTable(w io.Writer, rep verify.Report, expect verify.Expect) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tTYPE\tPROVIDER\tKEY/KEY_ID\tOBJECTS")
	for _, c := range rep.Counts {
		key := c.Key + c.KeyID
		if c.Problem {
			key += " (damaged)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", c.Resource, c.Type, dash(c.Provider), dash(key), c.Objects)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d objects", rep.Total)
	if expect.Set() {
		fmt.Fprintf(w, ", %d not as expected", rep.OffenderCount)
	}
	fmt.Fprintln(w)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
