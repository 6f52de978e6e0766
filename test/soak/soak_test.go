//go:build soak

// Package soak runs kms-plugin under sustained load on loopback: 64
// concurrent clients with the apiserver's call mix for about two minutes,
// a keyring rotation every 20 s, zero failed calls, and the plugin's RSS
// and goroutine count flat from start to end. Build tag soak; run it with
//
//	go test -tags soak -count=1 -timeout 10m -v ./test/soak/
//
// KMS_PLUGIN_SOAK_DURATION (a Go duration) shortens or lengthens the run.
package soak

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

const (
	concurrency   = 64
	rotationEvery = 20 * time.Second
	// Generous bounds: the point is to catch leaks that grow with the
	// number of calls (millions over a soak), not to hold the plugin to
	// a byte.
	maxGoroutineGrowth = 20
	maxRSSGrowth       = 64 << 20
)

type sample struct {
	goroutines, rss, procRSS float64
}

func (s sample) String() string {
	return fmt.Sprintf("goroutines %.0f, RSS %.1f MiB (/proc %.1f MiB)", s.goroutines, s.rss/(1<<20), s.procRSS/(1<<20))
}

func measure(t *testing.T, p *plugintest.Plugin) sample {
	t.Helper()
	m := p.Metrics(t)
	rss, err := p.RSS()
	if err != nil {
		t.Fatal(err)
	}
	g, ok := m["go_goroutines"]
	r, ok2 := m["process_resident_memory_bytes"]
	if !ok || !ok2 {
		t.Fatalf("/metrics lacks go_goroutines or process_resident_memory_bytes")
	}
	return sample{goroutines: g, rss: r, procRSS: float64(rss)}
}

func TestSoak(t *testing.T) {
	duration := 2 * time.Minute
	if s := os.Getenv("KMS_PLUGIN_SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("KMS_PLUGIN_SOAK_DURATION=%q: %v", s, err)
		}
		duration = d
	}
	path := plugintest.NewKeyring(t)
	p := plugintest.Start(t, "--keyring", path, "--log-level", "info")

	// Warm up so that the start sample already has the gRPC server's
	// steady-state goroutines and buffers.
	warm := plugintest.StartLoad(p.Client, concurrency)
	time.Sleep(3 * time.Second)
	if res := warm.Stop(); res.Errors != 0 {
		t.Fatalf("warm-up: %d of %d calls failed: %v", res.Errors, res.Ops, res.FirstErrors)
	}
	time.Sleep(time.Second)
	start := measure(t, p)
	t.Logf("start: %s", start)

	load := plugintest.StartLoad(p.Client, concurrency)
	began := time.Now()
	tick := time.NewTicker(rotationEvery)
	defer tick.Stop()
	end := time.After(duration)
	var keyIDs []string
	var peak sample
loop:
	for {
		select {
		case <-tick.C:
			id := strings.TrimSpace(plugintest.MustKmsctl(t, "keyring", "rotate", "--keyring", path))
			keyIDs = append(keyIDs, id)
			s := measure(t, p)
			peak.goroutines, peak.rss = max(peak.goroutines, s.goroutines), max(peak.rss, s.rss)
			snap := load.Snapshot()
			t.Logf("%5.0fs: rotated to %s; %d calls, %d failed; %s", time.Since(began).Seconds(), id, snap.Ops, snap.Errors, s)
		case <-end:
			break loop
		}
	}
	res := load.Stop()
	elapsed := time.Since(began)
	time.Sleep(2 * time.Second) // let connections and handlers wind down
	final := measure(t, p)

	t.Logf("end:   %s (peak under load: goroutines %.0f, RSS %.1f MiB)", final, peak.goroutines, peak.rss/(1<<20))
	t.Logf("%d calls in %s (%.0f/s) by %d clients, %d rotations, %d failed",
		res.Ops, elapsed.Round(time.Second), float64(res.Ops)/elapsed.Seconds(), concurrency, len(keyIDs), res.Errors)

	if res.Errors != 0 {
		t.Errorf("%d of %d calls failed: %v", res.Errors, res.Ops, res.FirstErrors)
	}
	if want := int(duration / rotationEvery); len(keyIDs) < want {
		t.Errorf("%d rotations, want %d", len(keyIDs), want)
	}
	if final.goroutines > start.goroutines+maxGoroutineGrowth {
		t.Errorf("goroutines grew from %.0f to %.0f (bound +%d): a leak", start.goroutines, final.goroutines, maxGoroutineGrowth)
	}
	if final.rss > max(2*start.rss, start.rss+maxRSSGrowth) {
		t.Errorf("RSS grew from %.1f to %.1f MiB: a leak", start.rss/(1<<20), final.rss/(1<<20))
	}
	// The plugin must have followed every rotation.
	if len(keyIDs) > 0 {
		plugintest.WaitFor(t, 5*time.Second, "the last rotated key_id", func() bool {
			return plugintest.StatusKeyID(t, p.Client) == keyIDs[len(keyIDs)-1]
		})
	}
}
