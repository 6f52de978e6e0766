//go:build bench && pkcs11

package bench_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/bench"
	"github.com/kms-plugin/kms-plugin/providers/pkcs11/softhsmtest"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

func init() {
	buildSections = append(buildSections, struct {
		name string
		run  func(*testing.T, *table)
	}{"pkcs11", benchPKCS11})
}

// benchPKCS11 compares kms-plugin on the PKCS#11 provider, on a SoftHSM
// token with its default --pkcs11-sessions, with the no-op floor, at
// concurrency 1 and 16 for encrypt and decrypt. Every call is a C_Encrypt
// or C_Decrypt on the token, so the ratio is the price of keeping the key
// in it; with a network HSM, add its round trip.
func benchPKCS11(t *testing.T, tb *table) {
	set := currentSettings()
	tk := softhsmtest.New(t, "")
	pluginBin := testbin.Build(t, "./cmd/kms-plugin")
	kmsctl := testbin.Build(t, "./cmd/kmsctl")
	flags := tk.PluginArgs("kek")
	if out, err := exec.Command(kmsctl, append([]string{"pkcs11", "rotate"}, flags...)...).CombinedOutput(); err != nil {
		t.Fatalf("kmsctl pkcs11 rotate: %v\n%s", err, out)
	}
	dir := t.TempDir()
	pluginEP := "unix://" + filepath.Join(dir, "plugin.sock")
	floorEP := "unix://" + filepath.Join(dir, "floor.sock")
	plugin := startServer(t, "kms-plugin", dir, pluginEP, pluginBin,
		append([]string{"--provider", "pkcs11", "--listen", pluginEP, "--health-addr", "", "--log-level", "warn"}, flags...)...)
	floor := startServer(t, "noop-server", dir, floorEP, kmsctl, "bench", "noop-server", "--listen", floorEP)
	ctx := context.Background()
	for _, op := range []bench.Op{bench.OpEncrypt, bench.OpDecrypt} {
		for _, conc := range []int{1, 16} {
			o := bench.Options{Op: op, Concurrency: conc, Duration: set.duration, Warmup: set.warmup, PlaintextSize: 32, Timeout: 3 * time.Second}
			run := func(s *server) func() (bench.Result, error) {
				return func() (bench.Result, error) {
					r, err := bench.Run(ctx, s.client, o)
					if err == nil && r.Errors > 0 {
						err = fmt.Errorf("%s: %d errors, first: %s", s.name, r.Errors, r.FirstError)
					}
					return r, err
				}
			}
			c, err := bench.Compare(set.rounds, run(plugin), run(floor))
			if err != nil {
				t.Fatalf("%s at concurrency %d: %v", op, conc, err)
			}
			pt, fl := medianResult(c.Target), medianResult(c.Baseline)
			thr, p99 := c.Ratios["ops_per_sec"], c.Ratios["p99"]
			tb.add(row{
				Section: "pkcs11 (SoftHSM) vs floor",
				Measure: fmt.Sprintf("%s c=%d throughput", op, conc),
				Value:   ratioString(thr),
				Detail:  fmt.Sprintf("%.0f vs %.0f ops/s", pt.OpsPerSec, fl.OpsPerSec),
			})
			tb.add(row{
				Section: "pkcs11 (SoftHSM) vs floor",
				Measure: fmt.Sprintf("%s c=%d p99", op, conc),
				Value:   ratioString(p99),
				Detail:  fmt.Sprintf("p50 %s vs %s, p99 %s vs %s", us(pt.P50), us(fl.P50), us(pt.P99), us(fl.P99)),
			})
		}
	}
}
