package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/kms-plugin/kms-plugin/conformance"
	"github.com/kms-plugin/kms-plugin/kms"
)

// errNonConformant is returned when at least one check failed; the report
// already says which, so main prints nothing more than this.
var errNonConformant = errors.New("the plugin does not conform to the KMS v2 contract")

func newConformanceCmd() *cobra.Command {
	var (
		endpoint string
		opts     conformance.Options
		total    time.Duration
		out      output
	)
	cmd := &cobra.Command{
		Use:   "conformance",
		Short: "Check any KMS v2 plugin against what kube-apiserver enforces",
		Long: `Check a running KMS v2 plugin (kms-plugin or any other) against the
contract kube-apiserver enforces: reply size limits, FQDN annotation keys,
Encrypt's key_id equal to Status', randomized ciphertexts, round trips,
tampered/truncated/empty/oversized/garbage/wrong-key_id input refused with a
meaningful gRPC code, a stable key_id, concurrent round trips, and health
after all of that.

Prints one line per check and a final "N passed, N failed"; exits 1 if any
check failed, and 2, with one line, if no plugin answers at the endpoint. It encrypts random data only and changes nothing, but
it does send a few hundred requests: run it against production plugins
deliberately. See docs/conformance.md for every check and why it matters.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, conn, err := kms.Dial(endpoint)
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx := cmd.Context()
			// One line, and its own exit code, for a plugin that is not
			// there, instead of every check failing with the dial error.
			if err := reachPlugin(ctx, client, endpoint, opts.Timeout); err != nil {
				return err
			}
			if total > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, total)
				defer cancel()
			}
			w := cmd.OutOrStdout()
			var werr error
			if !out.structured() {
				opts.OnResult = func(r conformance.Result) {
					if _, err := fmt.Fprintln(w, r); err != nil && werr == nil {
						werr = err
					}
				}
			}
			rep := conformance.Run(ctx, client, opts)
			if out.structured() {
				werr = printData(w, out, conformanceReport{Endpoint: endpoint, Results: rep.Results, Passed: rep.Passed(), Failed: rep.Failed()})
			} else if _, err := fmt.Fprintln(w, rep.Summary()); err != nil {
				return err
			}
			if werr != nil {
				return werr
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("conformance run stopped after %d of %d checks: %w", len(rep.Results), len(conformance.Checks), err)
			}
			if !rep.OK() {
				return errNonConformant
			}
			return nil
		},
	}
	addEndpointFlag(cmd.Flags(), &endpoint)
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 3*time.Second, "deadline of each call (the apiserver's EncryptionConfiguration timeout)")
	cmd.Flags().IntVar(&opts.Concurrency, "concurrency", 64, "round trips in flight at once in the concurrent check")
	cmd.Flags().IntVar(&opts.RoundTrips, "round-trips", 8, "round trips per concurrent worker")
	cmd.Flags().DurationVar(&total, "total-timeout", 2*time.Minute, "give up on the whole run after this long; 0 for no limit")
	addOutputFlag(cmd, &out)
	return cmd
}

// conformanceReport is what conformance -o json|yaml prints.
type conformanceReport struct {
	Endpoint string               `json:"endpoint"`
	Results  []conformance.Result `json:"results"`
	Passed   int                  `json:"passed"`
	Failed   int                  `json:"failed"`
}
