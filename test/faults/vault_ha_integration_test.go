//go:build integration

package faults

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/vaultserver"
)

// haCall is one call of the load: when it ran and how it ended.
type haCall struct {
	start, end time.Time
	err        error
}

// haWindow is an election: from the event that caused it until a new
// active node serves, plus a grace for the calls already in flight.
type haWindow struct {
	name         string
	event, known time.Time
}

// electionGrace is how long after a new leader serves the calls that were
// caught in the election may still fail: they retried inside their own
// 3 s deadline.
const electionGrace = 5 * time.Second

func (w haWindow) end() time.Time { return w.known.Add(electionGrace) }

func (w haWindow) overlaps(c haCall) bool { return c.end.After(w.event) && c.start.Before(w.end()) }

// TestVaultHAFailover runs kms-plugin against a 3-node Vault cluster with
// integrated storage, given every node's address, under load at
// concurrency 16 for 60 s. It kills the active node, then forces the next
// active node to step down, then restarts the killed node, and requires:
// (a) no wrong plaintext, ever, and every ciphertext made during the run
// still decrypts at the end; (b) failed calls only among those in flight
// during an election; (c) reports the time to recover after a new leader
// serves; (d) no failed call outside the election windows; (e) Status
// unhealthy during an election that failed calls, and healthy after.
func TestVaultHAFailover(t *testing.T) {
	c := vaultserver.StartCluster(t, 3)
	leader := c.WaitLeader(t, -1, 30*time.Second)
	root := c.Nodes[leader].Client(t)
	root.SetToken(c.RootToken)
	if err := root.Sys().Mount("transit", &api.MountInput{Type: "transit"}); err != nil {
		t.Fatalf("enable transit: %v", err)
	}
	if _, err := root.Logical().Write("transit/keys/kms", map[string]any{"type": "aes256-gcm96"}); err != nil {
		t.Fatalf("create key: %v", err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(c.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	p := plugintest.Start(t, "--provider", "vault", "--vault-addr", c.Addrs(), "--vault-key", "kms",
		"--vault-token-file", tokenFile, "--health-interval", "1s", "--health-timeout", "1s", "--vault-refresh-interval", "5s")

	const (
		workers  = 16
		duration = 60 * time.Second
		timeout  = 3 * time.Second // kube-apiserver's per-call timeout
	)
	type sealed struct {
		pt  []byte
		enc *kmsapi.EncryptResponse
		at  time.Time
	}
	var (
		mu        sync.Mutex
		calls     []haCall
		kept      []sealed
		wrong     []string
		statusLog []struct {
			at      time.Time
			healthy bool
		}
	)
	record := func(c haCall) { mu.Lock(); calls = append(calls, c); mu.Unlock() }
	ctx, stop := context.WithTimeout(context.Background(), duration)
	defer stop()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				cctx, cancel := context.WithTimeout(context.Background(), timeout)
				start := time.Now()
				if (i+w)%2 == 0 {
					pt := make([]byte, 32)
					_, _ = rand.Read(pt)
					enc, err := p.Client.Encrypt(cctx, &kmsapi.EncryptRequest{Plaintext: pt, Uid: "ha"})
					record(haCall{start, time.Now(), err})
					if err == nil {
						mu.Lock()
						kept = append(kept, sealed{pt, enc, start})
						mu.Unlock()
					}
				} else {
					mu.Lock()
					var it sealed
					if len(kept) > 0 {
						it = kept[(i*7+w)%len(kept)]
					}
					mu.Unlock()
					if it.enc != nil {
						resp, err := p.Client.Decrypt(cctx, &kmsapi.DecryptRequest{Ciphertext: it.enc.Ciphertext, KeyId: it.enc.KeyId, Uid: "ha"})
						record(haCall{start, time.Now(), err})
						if err == nil && !bytes.Equal(resp.Plaintext, it.pt) {
							mu.Lock()
							wrong = append(wrong, fmt.Sprintf("at %s", start.Format(time.TimeOnly)))
							mu.Unlock()
						}
					}
				}
				cancel()
			}
		})
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := p.Client.Status(sctx, &kmsapi.StatusRequest{})
			cancel()
			mu.Lock()
			statusLog = append(statusLog, struct {
				at      time.Time
				healthy bool
			}{time.Now(), err == nil && st.GetHealthz() == "ok"})
			mu.Unlock()
			time.Sleep(250 * time.Millisecond)
		}
	})

	began := time.Now()
	at := func(d time.Duration) { time.Sleep(time.Until(began.Add(d))) }
	var windows []haWindow

	at(10 * time.Second)
	killed := c.Leader()
	if killed < 0 {
		t.Fatal("no active node before the kill")
	}
	ev := time.Now()
	c.Kill(killed)
	next := c.WaitLeader(t, killed, 30*time.Second)
	windows = append(windows, haWindow{fmt.Sprintf("kill active node%d", killed), ev, time.Now()})

	at(30 * time.Second)
	ev = time.Now()
	c.StepDown(t, next)
	// Wait for the step-down to take effect, then for whichever node
	// serves next (with two nodes left, it may be the same one again).
	for deadline := time.Now().Add(5 * time.Second); c.Leader() == next && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	third := c.WaitLeader(t, -1, 30*time.Second)
	windows = append(windows, haWindow{fmt.Sprintf("step-down of node%d (node%d took over)", next, third), ev, time.Now()})

	at(45 * time.Second)
	c.Restart(t, killed) // joins as a standby: no election, no failed call allowed
	restarted := time.Now()

	wg.Wait()
	end := time.Now()

	// (a) every ciphertext made during the run decrypts to its plaintext.
	if len(wrong) > 0 {
		t.Fatalf("(a) %d Decrypts returned a wrong plaintext: %v", len(wrong), wrong)
	}
	// Every ciphertext made during an election, and every 50th of the
	// others, decrypts to its plaintext after the run.
	var check []sealed
	for i, it := range kept {
		inElection := false
		for _, w := range windows {
			inElection = inElection || (!it.at.Before(w.event) && it.at.Before(w.end()))
		}
		if inElection || i%50 == 0 {
			check = append(check, it)
		}
	}
	var failedAfter atomic.Int64
	var cursor atomic.Int64
	var vg sync.WaitGroup
	for range workers {
		vg.Go(func() {
			for i := int(cursor.Add(1)) - 1; i < len(check); i = int(cursor.Add(1)) - 1 {
				it := check[i]
				cctx, cancel := context.WithTimeout(context.Background(), timeout)
				resp, err := p.Client.Decrypt(cctx, &kmsapi.DecryptRequest{Ciphertext: it.enc.Ciphertext, KeyId: it.enc.KeyId, Uid: "ha"})
				cancel()
				if err != nil || !bytes.Equal(resp.Plaintext, it.pt) {
					if failedAfter.Add(1) == 1 {
						t.Errorf("(a) a ciphertext made at %s: Decrypt after the run = %v", it.at.Format("15:04:05.000"), err)
					}
				}
			}
		})
	}
	vg.Wait()
	t.Logf("(a) %d ciphertexts made during the run (every one made during an election) decrypt after it; %d failed", len(check), failedAfter.Load())

	sort.Slice(calls, func(i, j int) bool { return calls[i].start.Before(calls[j].start) })
	var failed, outside int
	for _, cl := range calls {
		if cl.err == nil {
			continue
		}
		failed++
		in := false
		for _, w := range windows {
			in = in || w.overlaps(cl)
		}
		if !in {
			outside++
			if outside <= 5 {
				t.Errorf("(b, d) a call failed outside every election window: %s to %s (restart of node%d at %s): %v",
					cl.start.Format("15:04:05.000"), cl.end.Format("15:04:05.000"), killed, restarted.Format("15:04:05.000"), cl.err)
			}
		}
	}
	t.Logf("%d calls at concurrency %d in %s; %d failed, %d of them outside the election windows",
		len(calls), workers, end.Sub(began).Round(time.Second), failed, outside)
	if len(calls) < 1000 {
		t.Errorf("only %d calls in %s: the load did not run", len(calls), duration)
	}

	for _, w := range windows {
		var inWindow, failedIn int
		var lastFail time.Time
		for _, cl := range calls {
			if !w.overlaps(cl) {
				continue
			}
			inWindow++
			if cl.err != nil {
				failedIn++
				if cl.end.After(lastFail) {
					lastFail = cl.end
				}
			}
		}
		recovery := time.Duration(0)
		if lastFail.After(w.known) {
			recovery = lastFail.Sub(w.known)
		}
		var unhealthy, healthyAfter, pollsAfter int
		for _, s := range statusLog {
			if !s.at.Before(w.event) && s.at.Before(w.end()) && !s.healthy {
				unhealthy++
			}
		}
		// (e) healthy again: every Status poll from 3 s after the window
		// until the next event.
		nextEvent := end
		for _, o := range windows {
			if o.event.After(w.event) && o.event.Before(nextEvent) {
				nextEvent = o.event
			}
		}
		for _, s := range statusLog {
			if s.at.After(w.end().Add(3*time.Second)) && s.at.Before(nextEvent) {
				pollsAfter++
				if s.healthy {
					healthyAfter++
				}
			}
		}
		t.Logf("%s: new leader serving after %s; %d calls in the window, %d failed; (c) recovered %s after the new leader served; "+
			"(e) %d unhealthy Status polls in the window, %d of %d healthy after it",
			w.name, w.known.Sub(w.event).Round(time.Millisecond), inWindow, failedIn, recovery.Round(time.Millisecond),
			unhealthy, healthyAfter, pollsAfter)
		if failedIn > 0 && unhealthy == 0 {
			t.Errorf("(e) %s: %d calls failed but Status never said unhealthy", w.name, failedIn)
		}
		if pollsAfter == 0 || healthyAfter != pollsAfter {
			t.Errorf("(e) %s: %d of %d Status polls healthy after the window, want all", w.name, healthyAfter, pollsAfter)
		}
	}
}
