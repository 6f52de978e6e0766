package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/bench"
	"github.com/kms-plugin/kms-plugin/kms"
)

func newBenchCmd() *cobra.Command {
	var (
		endpoint string
		op       string
		o        bench.Options
		baseline bool
		floor    string
		pid      int
		rounds   int
		out      output
		tf       transitFloorFlags

		maxErrorRate float64
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-test any KMS v2 plugin, optionally against a floor measured in the same run",
		Long: `Drive a KMS v2 plugin with one operation at a fixed concurrency and report
ops/s and p50/p90/p99/max latency, with errors and the first error's text.
Calls in flight carry distinct inputs: every Decrypt in flight has a
ciphertext of its own, so a plugin that coalesces identical calls gains
nothing from it.

On a unix socket kmsctl also finds the plugin's process (from the socket's
peer credentials, or --pid) and reports its CPU time per 1000 calls.

With --baseline, kmsctl also starts a floor as a separate process on a
temporary socket, measures it in alternating rounds with the plugin, and
prints every figure as a ratio to it (the median of the rounds, with min
and max). Ratios, not absolute times, are what compare across machines.
The floor is a KMS v2 server over the same gRPC stack that does:

  --floor noop      nothing (Encrypt returns the plaintext); the floor of
                    any plugin
  --floor transit   one raw Vault transit call per request with net/http,
                    no SDK and no checks; the floor of any plugin that wraps
                    DEKs with Vault transit. It needs --vault-addr,
                    --vault-key and a token (VAULT_TOKEN or
                    --vault-token-file) that may use the key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if o.Op, err = bench.ParseOp(op); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			var floorArgs []string
			var floorEnv []string
			if baseline {
				if floorArgs, floorEnv, err = tf.childArgs(floor); err != nil {
					return flagError(err)
				}
			}
			ctx := cmd.Context()
			target, closeTarget, err := dialBench(endpoint)
			if err != nil {
				return err
			}
			defer closeTarget()
			if err := reachPlugin(ctx, target, endpoint, o.Timeout); err != nil {
				return err
			}
			targetOpts := o
			if targetOpts.PID, err = benchPID(endpoint, pid); err != nil {
				return err
			}
			measure := func(c kmsapi.KeyManagementServiceClient, o bench.Options) func() (bench.Result, error) {
				return func() (bench.Result, error) { return bench.Run(ctx, c, o) }
			}
			if !baseline {
				var results []bench.Result
				for range rounds {
					r, err := measure(target, targetOpts)()
					if err != nil {
						return err
					}
					results = append(results, r)
				}
				if err := printBench(cmd.OutOrStdout(), out, o, results, nil); err != nil {
					return err
				}
				return checkErrors(results, maxErrorRate)
			}
			floorClient, floorPID, stop, err := startFloor(ctx, cmd.ErrOrStderr(), floorArgs, floorEnv)
			if err != nil {
				return err
			}
			defer stop()
			floorOpts := o
			if targetOpts.PID != 0 {
				floorOpts.PID = floorPID
			}
			c, err := bench.Compare(rounds, measure(target, targetOpts), measure(floorClient, floorOpts))
			if err != nil {
				return err
			}
			if err := printBench(cmd.OutOrStdout(), out, o, c.Target, &c); err != nil {
				return err
			}
			return checkErrors(c.Target, maxErrorRate)
		},
	}
	f := cmd.Flags()
	addEndpointFlag(f, &endpoint)
	f.StringVar(&op, "op", "roundtrip", "operation: encrypt, decrypt, status or roundtrip")
	f.IntVar(&o.Concurrency, "concurrency", 16, "concurrent callers")
	f.DurationVar(&o.Duration, "duration", 5*time.Second, "measured time per round")
	f.DurationVar(&o.Warmup, "warmup", time.Second, "unmeasured warm-up before each round")
	f.IntVar(&o.PlaintextSize, "plaintext-size", 32, "plaintext bytes per Encrypt (kube-apiserver sends 32)")
	f.DurationVar(&o.Timeout, "timeout", 3*time.Second, "per-call timeout (kube-apiserver's default)")
	f.BoolVar(&baseline, "baseline", false, "measure a floor (--floor) in the same run and print ratios to it")
	f.StringVar(&floor, "floor", "noop", "the floor for --baseline: noop, or transit (one raw Vault transit call per request)")
	f.IntVar(&pid, "pid", 0, "process whose CPU time to report (default: the socket's server, when this host can see it; -1: none)")
	tf.register(f)
	f.IntVar(&rounds, "rounds", 3, "rounds to run (alternating with the baseline)")
	f.Float64Var(&maxErrorRate, "max-error-rate", 0, "fail if more than this fraction of the plugin's calls failed (0: any failed call fails the run)")
	addOutputFlag(cmd, &out)
	cmd.AddCommand(newNoopServerCmd(), newTransitFloorCmd())
	return cmd
}

func dialBench(endpoint string) (kmsapi.KeyManagementServiceClient, func(), error) {
	client, conn, err := kms.Dial(endpoint)
	if err != nil {
		return nil, nil, err
	}
	return client, func() { _ = conn.Close() }, nil
}

// startFloor runs `kmsctl bench <floorArgs> --listen <socket>` as a child
// process on a socket in a new temporary directory and waits until it
// answers Status. env adds to the child's environment.
func startFloor(ctx context.Context, stderr io.Writer, floorArgs, env []string) (kmsapi.KeyManagementServiceClient, int, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("find kmsctl's own binary: %w", err)
	}
	dir, err := os.MkdirTemp("", "kmsctl-bench-")
	if err != nil {
		return nil, 0, nil, err
	}
	endpoint := "unix://" + filepath.Join(dir, "floor.sock")
	child := exec.Command(self, append(append([]string{"bench"}, floorArgs...), "--listen", endpoint)...)
	child.Stderr = stderr
	child.Env = append(os.Environ(), env...)
	if err := child.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, 0, nil, fmt.Errorf("start the floor: %w", err)
	}
	stop := func() {
		_ = child.Process.Kill()
		_ = child.Wait()
		_ = os.RemoveAll(dir)
	}
	client, closeConn, err := dialBench(endpoint)
	if err != nil {
		stop()
		return nil, 0, nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := client.Status(cctx, &kmsapi.StatusRequest{})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			closeConn()
			stop()
			return nil, 0, nil, fmt.Errorf("the floor (%s) did not start: %w", floorArgs[0], err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return client, child.Process.Pid, func() { closeConn(); stop() }, nil
}

// checkErrors fails a run in which more than maxRate of the calls failed:
// figures measured over failures measure nothing. Latencies are of
// successful calls only.
func checkErrors(results []bench.Result, maxRate float64) error {
	var calls, errs int64
	first := ""
	for _, r := range results {
		calls += r.Ops
		errs += r.Errors
		if first == "" {
			first = r.FirstError
		}
	}
	switch {
	case calls == 0:
		return errors.New("no call completed: nothing was measured")
	case errs == calls:
		return fmt.Errorf("every one of %d calls failed; first error: %s", calls, first)
	case float64(errs)/float64(calls) > maxRate:
		return fmt.Errorf("%d of %d calls failed (%.2f%%, over --max-error-rate %g); first error: %s", errs, calls, 100*float64(errs)/float64(calls), maxRate, first)
	}
	return nil
}

// benchReport is what -o json prints.
type benchReport struct {
	Op          bench.Op               `json:"op"`
	Concurrency int                    `json:"concurrency"`
	Rounds      []bench.Result         `json:"rounds"`
	Baseline    []bench.Result         `json:"baseline,omitempty"`
	Ratios      map[string]bench.Ratio `json:"ratios,omitempty"`
}

func printBench(w io.Writer, out output, o bench.Options, results []bench.Result, c *bench.Comparison) error {
	if out.structured() {
		rep := benchReport{Op: o.Op, Concurrency: o.Concurrency, Rounds: results}
		if c != nil {
			rep.Baseline, rep.Ratios = c.Baseline, c.Ratios
		}
		return printData(w, out, rep)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "op %s, concurrency %d\n", o.Op, o.Concurrency)
	fmt.Fprintln(tw, "ROUND\tWHO\tOPS/S\tP50\tP90\tP99\tMAX\tERRORS\tCPU-MS/1000")
	row := func(i int, who string, r bench.Result) {
		us := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
		cpu := "-"
		if r.CPUMsPer1000 > 0 {
			cpu = fmt.Sprintf("%.1f", r.CPUMsPer1000)
		}
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%v\t%v\t%v\t%v\t%d\t%s\n", i+1, who, r.OpsPerSec, us(r.P50), us(r.P90), us(r.P99), us(r.Max), r.Errors, cpu)
	}
	var firstErr string
	for i, r := range results {
		row(i, "plugin", r)
		if c != nil {
			row(i, "floor", c.Baseline[i])
		}
		if firstErr == "" {
			firstErr = r.FirstError
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if firstErr != "" {
		fmt.Fprintf(w, "first error: %s\n", firstErr)
	}
	if c == nil {
		return nil
	}
	fmt.Fprintln(w, "\nplugin / floor (median [min, max] of the rounds):")
	names := make([]string, 0, len(c.Ratios))
	for n := range c.Ratios {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		r := c.Ratios[n]
		fmt.Fprintf(w, "  %-12s %.2fx [%.2f, %.2f]\n", n, r.Median, r.Min, r.Max)
	}
	return nil
}
