//go:build bench

package bench_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/bench"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// benchLocal compares kms-plugin on the local provider with the no-op
// floor (`kmsctl bench noop-server`), both separate processes on their own
// unix sockets, at concurrency 1, 16 and 64 for encrypt, decrypt and
// status; and records each process's CPU time and resident set while it
// served, for the footprint rows.
func benchLocal(t *testing.T, tb *table) {
	set := currentSettings()
	pluginBin := testbin.Build(t, "./cmd/kms-plugin")
	kmsctl := testbin.Build(t, "./cmd/kmsctl")
	dir := t.TempDir()
	keyring := filepath.Join(dir, "keyring.json")
	if out, err := exec.Command(kmsctl, "keyring", "init", "--keyring", keyring).CombinedOutput(); err != nil {
		t.Fatalf("kmsctl keyring init: %v\n%s", err, out)
	}
	pluginEP := "unix://" + filepath.Join(dir, "plugin.sock")
	floorEP := "unix://" + filepath.Join(dir, "floor.sock")
	plugin := startServer(t, "kms-plugin", dir, pluginEP, pluginBin,
		"--provider", "local", "--keyring", keyring, "--listen", pluginEP, "--health-addr", "", "--log-level", "warn")
	floor := startServer(t, "noop-server", dir, floorEP, kmsctl, "bench", "noop-server", "--listen", floorEP)

	type cpuRounds struct{ plugin, floor []float64 } // CPU ms per 1000 ops, per round
	footprint := map[bench.Op]*cpuRounds{}
	ctx := context.Background()
	for _, op := range []bench.Op{bench.OpEncrypt, bench.OpDecrypt, bench.OpStatus} {
		for _, conc := range []int{1, 16, 64} {
			o := bench.Options{Op: op, Concurrency: conc, Duration: set.duration, Warmup: set.warmup, PlaintextSize: 32, Timeout: 3 * time.Second}
			cpu := &cpuRounds{}
			measure := func(s *server, into *[]float64) func() (bench.Result, error) {
				return func() (bench.Result, error) {
					before, err := bench.SampleProc(s.cmd.Process.Pid)
					if err != nil {
						return bench.Result{}, err
					}
					r, err := bench.Run(ctx, s.client, o)
					if err != nil {
						return r, err
					}
					after, err := bench.SampleProc(s.cmd.Process.Pid)
					if err != nil {
						return r, err
					}
					if r.Errors > 0 {
						return r, fmt.Errorf("%s: %d errors, first: %s", s.name, r.Errors, r.FirstError)
					}
					// Warm-up calls burn CPU too; count them at the measured rate.
					calls := float64(r.Ops) * float64(o.Duration+o.Warmup) / float64(o.Duration)
					*into = append(*into, float64(after.CPU-before.CPU)/float64(time.Millisecond)/calls*1000)
					return r, nil
				}
			}
			c, err := bench.Compare(set.rounds, measure(plugin, &cpu.plugin), measure(floor, &cpu.floor))
			if err != nil {
				t.Fatalf("%s at concurrency %d: %v", op, conc, err)
			}
			if conc == 16 {
				footprint[op] = cpu
			}
			pt, fl := medianResult(c.Target), medianResult(c.Baseline)
			thr, p99 := c.Ratios["ops_per_sec"], c.Ratios["p99"]
			tb.add(row{
				Section: "1 local vs floor",
				Measure: fmt.Sprintf("%s c=%d throughput", op, conc),
				Value:   ratioString(thr),
				Detail:  fmt.Sprintf("%.0f vs %.0f ops/s", pt.OpsPerSec, fl.OpsPerSec),
				Target:  "≥ 0.90x",
				Meets:   meets(thr.Median >= 0.90),
			})
			tb.add(row{
				Section: "1 local vs floor",
				Measure: fmt.Sprintf("%s c=%d p99", op, conc),
				Value:   ratioString(p99),
				Detail:  fmt.Sprintf("p50 %s vs %s, p99 %s vs %s", us(pt.P50), us(fl.P50), us(pt.P99), us(fl.P99)),
				Target:  "≤ 1.2x",
				Meets:   meets(p99.Median <= 1.2),
			})
		}
	}
	for _, op := range []bench.Op{bench.OpEncrypt, bench.OpDecrypt, bench.OpStatus} {
		cpu := footprint[op]
		var ratios []float64
		for i := range cpu.plugin {
			if cpu.floor[i] > 0 {
				ratios = append(ratios, cpu.plugin[i]/cpu.floor[i])
			}
		}
		lo, hi := minMax(ratios)
		tb.add(row{
			Section: "6 footprint",
			Measure: fmt.Sprintf("CPU per 1000 %s (c=16)", op),
			Value:   fmt.Sprintf("%.2fx [%.2f, %.2f]", median(ratios), lo, hi),
			Detail:  fmt.Sprintf("%.1f vs %.1f CPU-ms per 1000 ops", median(cpu.plugin), median(cpu.floor)),
		})
	}
	ps, err1 := bench.SampleProc(plugin.cmd.Process.Pid)
	fs, err2 := bench.SampleProc(floor.cmd.Process.Pid)
	if err1 != nil || err2 != nil {
		t.Fatalf("read /proc: %v %v", err1, err2)
	}
	tb.add(row{
		Section: "6 footprint",
		Measure: "peak RSS after section 1",
		Value:   fmt.Sprintf("%.2fx", float64(ps.PeakKB)/float64(fs.PeakKB)),
		Detail:  fmt.Sprintf("%.1f vs %.1f MiB peak; %.1f vs %.1f MiB now", float64(ps.PeakKB)/1024, float64(fs.PeakKB)/1024, float64(ps.RSSKB)/1024, float64(fs.RSSKB)/1024),
	})
}

// medianResult is the round with the median throughput.
func medianResult(rs []bench.Result) bench.Result {
	if len(rs) == 0 {
		return bench.Result{}
	}
	s := append([]bench.Result(nil), rs...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j].OpsPerSec < s[i].OpsPerSec {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}
