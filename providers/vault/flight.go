package vault

import (
	"context"
	"sync"
)

// decryptFlights coalesces identical concurrent Decrypts: the first caller
// makes the Vault call on its own goroutine and the others wait for its
// result, each until its own context ends. (A generic singleflight would
// start a goroutine per call, whose stack then grows through the whole
// HTTP client on every Decrypt.)
type decryptFlights struct {
	mu sync.Mutex
	m  map[cacheKey]*flight
}

type flight struct {
	done chan struct{}
	pt   []byte
	err  error
}

// do returns fn's result for key: fn runs once for all the callers that
// arrive while it runs. The result's bytes are shared; callers copy them.
func (f *decryptFlights) do(ctx context.Context, key cacheKey, fn func() ([]byte, error)) ([]byte, error) {
	f.mu.Lock()
	if fl, ok := f.m[key]; ok {
		f.mu.Unlock()
		select {
		case <-fl.done:
			return fl.pt, fl.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	fl := &flight{done: make(chan struct{})}
	if f.m == nil {
		f.m = map[cacheKey]*flight{}
	}
	f.m[key] = fl
	f.mu.Unlock()

	fl.pt, fl.err = fn()
	f.mu.Lock()
	delete(f.m, key)
	f.mu.Unlock()
	close(fl.done)
	return fl.pt, fl.err
}
