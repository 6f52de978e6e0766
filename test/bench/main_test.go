//go:build bench

package bench_test

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/kms-plugin/kms-plugin/bench"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

var (
	flagRounds   = flag.Int("kms.rounds", 5, "alternating rounds per comparison (the issue asks for at least 3)")
	flagDuration = flag.Duration("kms.duration", 2*time.Second, "measured time per round of a load comparison")
	flagOnly     = flag.String("kms.only", "", "comma-separated sections to run: local, vault, pkcs11, apiserver (default: all)")
	flagOut      = flag.String("kms.out", "", "also write the results table, as Markdown, to this file")
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// buildSections are sections that exist only in builds with their tag
// (pkcs11: cgo and SoftHSM); each registers itself from its file.
var buildSections []struct {
	name string
	run  func(*testing.T, *table)
}

// row is one line of the results table.
type row struct {
	Section string
	Measure string
	Value   string // the ratio or count, as measured
	Detail  string // the absolute figures behind it
	Target  string // the target, if any
	Meets   string // "yes", "NO" or "" when there is no target
}

// table collects the rows of every section, in order.
type table struct {
	mu   sync.Mutex
	rows []row
}

func (tb *table) add(r row) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.rows = append(tb.rows, r)
}

func (tb *table) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SECTION\tMEASURE\tVALUE\tTARGET\tMEETS\tDETAIL")
	for _, r := range tb.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Section, r.Measure, r.Value, r.Target, r.Meets, r.Detail)
	}
	_ = tw.Flush()
}

func (tb *table) markdown(w io.Writer) {
	fmt.Fprintln(w, "| section | measure | value | target | meets | detail |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	cell := strings.NewReplacer("|", "\\|").Replace
	for _, r := range tb.rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", cell(r.Section), cell(r.Measure), cell(r.Value), cell(r.Target), cell(r.Meets), cell(r.Detail))
	}
}

func meets(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

func ratioString(r bench.Ratio) string {
	return fmt.Sprintf("%.2fx [%.2f, %.2f]", r.Median, r.Min, r.Max)
}

func want(section string) bool {
	if *flagOnly == "" {
		return true
	}
	return slices.Contains(strings.Split(*flagOnly, ","), section)
}

// settings are the knobs that -short and the flags turn.
type settings struct {
	rounds   int
	duration time.Duration
	warmup   time.Duration
}

func currentSettings() settings {
	s := settings{rounds: max(*flagRounds, 1), duration: *flagDuration, warmup: 500 * time.Millisecond}
	if testing.Short() {
		s.duration, s.warmup = min(s.duration, time.Second), 200*time.Millisecond
	}
	return s
}

// TestBench is the suite's one entry point: every section, then the table.
func TestBench(t *testing.T) {
	tb := &table{}
	start := time.Now()
	load1, _ := os.ReadFile("/proc/loadavg")
	if want("local") {
		t.Run("local", func(t *testing.T) { benchLocal(t, tb) })
	}
	if want("vault") {
		t.Run("vault", func(t *testing.T) { benchVault(t, tb) })
	}
	for _, s := range buildSections {
		if want(s.name) {
			t.Run(s.name, func(t *testing.T) { s.run(t, tb) })
		}
	}
	if want("apiserver") {
		t.Run("apiserver", func(t *testing.T) { benchAPIServer(t, tb) })
	}
	load2, _ := os.ReadFile("/proc/loadavg")
	var b strings.Builder
	fmt.Fprintf(&b, "\nkms-plugin benchmark suite: %s, %d CPUs (%s), GOMAXPROCS %d, %s/%s\n",
		runtime.Version(), runtime.NumCPU(), cpuModel(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "rounds %d, duration %s per round; load average before %s, after %s; took %s\n\n",
		currentSettings().rounds, currentSettings().duration, strings.Join(strings.Fields(string(load1))[:3], " "),
		strings.Join(strings.Fields(string(load2))[:3], " "), time.Since(start).Round(time.Second))
	tb.print(&b)
	fmt.Print(b.String())
	if *flagOut != "" {
		f, err := os.Create(*flagOut)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fmt.Fprintf(f, "```\n%s```\n\n", b.String())
		tb.markdown(f)
	}
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
