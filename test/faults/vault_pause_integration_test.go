//go:build integration

package faults

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/vaultserver"
)

// vaultPID finds the dev server's process by the listen address only it
// was started with.
func vaultPID(t *testing.T, s *vaultserver.Server) int {
	t.Helper()
	u, err := url.Parse(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	want := "-dev-listen-address=" + u.Host
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			if arg == want {
				var pid int
				if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil {
					return pid
				}
			}
		}
	}
	t.Fatalf("no process runs with %s", want)
	return 0
}

// TestVaultPausedMidLoad freezes Vault with SIGSTOP while kms-plugin
// serves: a frozen server accepts connections and never answers, the
// hardest kind of outage to notice. Calls must fail fast with Unavailable
// inside their deadline, Status must turn unhealthy (not an error: this is
// not a revocation), and after SIGCONT the plugin must recover by itself
// with every earlier ciphertext decrypting.
func TestVaultPausedMidLoad(t *testing.T) {
	s := vaultserver.StartTransit(t, vaultserver.Options{}, "transit", "kms")
	tokenFile := s.TokenFile(t)
	p := plugintest.Start(t, "--provider", "vault", "--vault-addr", s.Addr, "--vault-key", "kms",
		"--vault-token-file", tokenFile, "--vault-timeout", "500ms", "--health-timeout", "1s")

	type sealed struct {
		pt  []byte
		enc *kmsapi.EncryptResponse
	}
	var items []sealed
	for range 16 {
		pt := make([]byte, 32)
		_, _ = rand.Read(pt)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		enc, err := p.Client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: pt})
		cancel()
		if err != nil {
			t.Fatalf("Encrypt = %v", err)
		}
		items = append(items, sealed{pt, enc})
	}
	decrypt := func(it sealed, d time.Duration) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		start := time.Now()
		resp, err := p.Client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: it.enc.GetCiphertext(), KeyId: it.enc.GetKeyId()})
		if err == nil && !bytes.Equal(resp.GetPlaintext(), it.pt) {
			err = fmt.Errorf("wrong plaintext")
		}
		return time.Since(start), err
	}

	pid := vaultPID(t, s)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP vault: %v", err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT vault: %v", err)
			}
		}
	}
	t.Cleanup(resume)

	// Calls during the pause: Unavailable, before the 3 s deadline.
	const deadline = 3 * time.Second
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	codesSeen := map[codes.Code]int{}
	for i := range 8 {
		wg.Go(func() {
			for j := range 3 {
				d, err := decrypt(items[(i*3+j)%len(items)], deadline)
				mu.Lock()
				codesSeen[status.Code(err)]++
				slowest = max(slowest, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("Decrypt while Vault is paused: codes %v, slowest %s", codesSeen, slowest)
	if codesSeen[codes.Unavailable] == 0 || len(codesSeen) != 1 {
		t.Errorf("Decrypt while Vault is paused gave codes %v, want only Unavailable", codesSeen)
	}
	if slowest >= deadline {
		t.Errorf("slowest Decrypt while Vault is paused took %s: it must fail before the %s deadline", slowest, deadline)
	}

	plugintest.WaitFor(t, 10*time.Second, "Status to turn unhealthy", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := p.Client.Status(ctx, &kmsapi.StatusRequest{})
		if err != nil {
			t.Fatalf("Status while Vault is paused = %v; want an unhealthy reply, not an error (a pause is not a revocation)", err)
		}
		return st.GetHealthz() != "ok"
	})

	resume()
	start := time.Now()
	plugintest.WaitFor(t, 20*time.Second, "Status to recover by itself", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := p.Client.Status(ctx, &kmsapi.StatusRequest{})
		return err == nil && st.GetHealthz() == "ok"
	})
	t.Logf("healthy again %s after SIGCONT", time.Since(start).Round(10*time.Millisecond))
	for i := range 100 {
		if _, err := decrypt(items[i%len(items)], deadline); err != nil {
			t.Fatalf("Decrypt %d after recovery = %v", i, err)
		}
	}
}
