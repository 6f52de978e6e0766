//go:build bench

package bench_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/bench"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// TestCompareBinaries shows a change's before and after: two kms-plugin
// binaries on the local provider, side by side in alternating rounds, for
// every operation at concurrency 1, 16 and 64. Build the two binaries (for
// example with `go build -overlay` or from two worktrees) and run
//
//	KMS_BENCH_BEFORE=/tmp/before KMS_BENCH_AFTER=/tmp/after \
//	  go test -tags bench -count=1 -v -run TestCompareBinaries ./test/bench
func TestCompareBinaries(t *testing.T) {
	before, after := os.Getenv("KMS_BENCH_BEFORE"), os.Getenv("KMS_BENCH_AFTER")
	if before == "" || after == "" {
		t.Skip("set KMS_BENCH_BEFORE and KMS_BENCH_AFTER to two kms-plugin binaries")
	}
	kmsctl := testbin.Build(t, "./cmd/kmsctl")
	dir := t.TempDir()
	keyring := filepath.Join(dir, "keyring.json")
	if out, err := exec.Command(kmsctl, "keyring", "init", "--keyring", keyring).CombinedOutput(); err != nil {
		t.Fatalf("kmsctl keyring init: %v\n%s", err, out)
	}
	start := func(name, bin string) *server {
		ep := "unix://" + filepath.Join(dir, name+".sock")
		return startServer(t, name, dir, ep, bin, "--provider", "local", "--keyring", keyring, "--listen", ep, "--health-addr", "", "--log-level", "warn")
	}
	b, a := start("before", before), start("after", after)
	set := currentSettings()
	tb := &table{}
	for _, op := range []bench.Op{bench.OpEncrypt, bench.OpDecrypt, bench.OpStatus} {
		for _, conc := range []int{1, 16, 64} {
			o := bench.Options{Op: op, Concurrency: conc, Duration: set.duration, Warmup: set.warmup, PlaintextSize: 32, Timeout: 3 * time.Second}
			var cpuAfter, cpuBefore []float64
			measure := func(s *server, into *[]float64) func() (bench.Result, error) {
				return func() (bench.Result, error) {
					s0, err := bench.SampleProc(s.cmd.Process.Pid)
					if err != nil {
						return bench.Result{}, err
					}
					r, err := bench.Run(context.Background(), s.client, o)
					if err != nil {
						return r, err
					}
					s1, err := bench.SampleProc(s.cmd.Process.Pid)
					if err != nil {
						return r, err
					}
					calls := float64(r.Ops) * float64(o.Duration+o.Warmup) / float64(o.Duration)
					*into = append(*into, float64(s1.CPU-s0.CPU)/float64(time.Millisecond)/calls*1000)
					return r, nil
				}
			}
			c, err := bench.Compare(set.rounds, measure(a, &cpuAfter), measure(b, &cpuBefore))
			if err != nil {
				t.Fatal(err)
			}
			tb.add(row{
				Section: "after / before",
				Measure: fmt.Sprintf("%s c=%d", op, conc),
				Value:   ratioString(c.Ratios["ops_per_sec"]),
				Detail: fmt.Sprintf("%.0f vs %.0f ops/s; p99 %s; CPU %.1f vs %.1f ms per 1000 ops",
					medianResult(c.Target).OpsPerSec, medianResult(c.Baseline).OpsPerSec, ratioString(c.Ratios["p99"]), median(cpuAfter), median(cpuBefore)),
			})
		}
	}
	tb.print(os.Stdout)
}
