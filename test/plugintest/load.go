package plugintest

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	kmsapi "k8s.io/kms/apis/v2"
)

// Load drives a KMS v2 plugin with the apiserver's mix of calls from many
// goroutines: Encrypt of fresh 32-byte seeds (20%), Decrypt of earlier
// ciphertexts, old key versions included (70%), and Status polls (10%).
// Every failure counts: an error, a wrong plaintext, an unhealthy Status.
type Load struct {
	client kmsapi.KeyManagementServiceClient
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ops, errs atomic.Int64
	mu        sync.Mutex
	first     []string
	pool      []sealed
	next      int
}

type sealed struct {
	plaintext, ciphertext []byte
	keyID                 string
	annotations           map[string][]byte
}

// LoadResult sums up a run.
type LoadResult struct {
	Ops, Errors int64
	// FirstErrors holds up to 10 failures, in order.
	FirstErrors []string
}

const poolSize = 512

// StartLoad starts workers goroutines against client; Stop ends them.
func StartLoad(client kmsapi.KeyManagementServiceClient, workers int) *Load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{client: client, cancel: cancel}
	for range workers {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				l.one(ctx)
			}
		})
	}
	return l
}

// Stop ends the load and returns the totals.
func (l *Load) Stop() LoadResult {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return LoadResult{Ops: l.ops.Load(), Errors: l.errs.Load(), FirstErrors: append([]string(nil), l.first...)}
}

// Snapshot returns the totals so far without stopping.
func (l *Load) Snapshot() LoadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return LoadResult{Ops: l.ops.Load(), Errors: l.errs.Load(), FirstErrors: append([]string(nil), l.first...)}
}

func (l *Load) fail(format string, args ...any) {
	l.errs.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.first) < 10 {
		l.first = append(l.first, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
	}
}

func (l *Load) pick() (sealed, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pool) == 0 {
		return sealed{}, false
	}
	return l.pool[mrand.IntN(len(l.pool))], true
}

func (l *Load) keep(s sealed) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pool) < poolSize {
		l.pool = append(l.pool, s)
		return
	}
	l.pool[l.next] = s
	l.next = (l.next + 1) % poolSize
}

func (l *Load) one(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	n := mrand.IntN(10)
	s, ok := l.pick()
	if !ok {
		n = 0 // nothing to decrypt yet
	}
	var err error
	switch {
	case n < 2:
		pt := make([]byte, 32)
		_, _ = rand.Read(pt)
		var resp *kmsapi.EncryptResponse
		resp, err = l.client.Encrypt(cctx, &kmsapi.EncryptRequest{Plaintext: pt, Uid: "load"})
		if err == nil {
			l.keep(sealed{plaintext: pt, ciphertext: resp.GetCiphertext(), keyID: resp.GetKeyId(), annotations: resp.GetAnnotations()})
		}
	case n < 9:
		var resp *kmsapi.DecryptResponse
		resp, err = l.client.Decrypt(cctx, &kmsapi.DecryptRequest{Ciphertext: s.ciphertext, KeyId: s.keyID, Annotations: s.annotations, Uid: "load"})
		if err == nil && !bytes.Equal(resp.GetPlaintext(), s.plaintext) {
			l.ops.Add(1)
			l.fail("Decrypt under %s returned a wrong plaintext", s.keyID)
			return
		}
	default:
		var resp *kmsapi.StatusResponse
		resp, err = l.client.Status(cctx, &kmsapi.StatusRequest{})
		if err == nil && (resp.GetVersion() != "v2" || resp.GetHealthz() != "ok") {
			l.ops.Add(1)
			l.fail("Status = version %q, healthz %q", resp.GetVersion(), resp.GetHealthz())
			return
		}
	}
	if ctx.Err() != nil {
		return // stopped mid-call: not the plugin's failure
	}
	l.ops.Add(1)
	if err != nil {
		l.fail("%v", err)
	}
}
