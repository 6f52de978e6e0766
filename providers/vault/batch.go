package vault

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/vault/api"
)

// decryptBatcher sends Decrypts that pile up to transit's batch_input, so
// that a burst (an apiserver's cold start reads every DEK it needs at once)
// costs Vault a few HTTP requests instead of one per DEK.
//
// It adds no wait: while fewer than maxInFlight decrypt requests are in
// flight, a Decrypt goes out at once, alone. Only the calls that arrive
// while maxInFlight requests are out queue, and each request that comes
// back takes up to maxBatch of them with it as one batch request. So a
// lone call never waits for company, and under load Vault sees at most
// maxInFlight decrypt requests from this plugin, each as full as the load
// makes it.
type decryptBatcher struct {
	hot         *transitHTTP
	maxInFlight int
	maxBatch    int
	// off is set when the server answered a batch with something that is
	// not a batch response (a server without batch_input): from then on
	// every Decrypt goes alone.
	off atomic.Bool

	mu       sync.Mutex
	inFlight int
	queue    []*batchItem
}

// Batching limits: at most this many decrypt requests in flight before
// calls queue, and at most this many ciphertexts per batch request.
const (
	batchMaxInFlight = 4
	batchMaxItems    = 64
)

type batchItem struct {
	ciphertext string
	ad         []byte
	done       chan struct{}
	plaintext  []byte
	err        error
	// settled is taken by whichever comes first: the sender delivering
	// the result, or the caller giving up. A result delivered to a caller
	// that gave up is zeroed by the sender; nobody else would.
	settled atomic.Bool
}

// deliver hands the item its result, or zeroes the plaintext if the
// caller already gave up.
func (it *batchItem) deliver(pt []byte, err error) {
	if !it.settled.CompareAndSwap(false, true) {
		clear(pt)
		pt = nil
	}
	it.plaintext, it.err = pt, err
	close(it.done)
}

// wait returns the item's result, or ctx's error if ctx ends first.
func (it *batchItem) wait(ctx context.Context) ([]byte, error) {
	select {
	case <-it.done:
		return it.plaintext, it.err
	case <-ctx.Done():
		if it.settled.CompareAndSwap(false, true) {
			return nil, ctx.Err() // the sender will zero what arrives
		}
		<-it.done // delivered meanwhile: take it
		return it.plaintext, it.err
	}
}

func newDecryptBatcher(hot *transitHTTP) *decryptBatcher {
	return &decryptBatcher{hot: hot, maxInFlight: batchMaxInFlight, maxBatch: batchMaxItems}
}

func (b *decryptBatcher) decrypt(ctx context.Context, ciphertext string, ad []byte) ([]byte, error) {
	if b.off.Load() {
		return b.hot.decrypt(ctx, ciphertext, ad)
	}
	b.mu.Lock()
	if b.inFlight < b.maxInFlight {
		b.inFlight++
		b.mu.Unlock()
		pt, err := b.hot.decrypt(ctx, ciphertext, ad)
		b.release()
		return pt, err
	}
	it := &batchItem{ciphertext: ciphertext, ad: ad, done: make(chan struct{})}
	b.queue = append(b.queue, it)
	b.mu.Unlock()
	return it.wait(ctx)
}

// release hands a finished request's slot to the queue: what queued goes
// out as one batch request on a goroutine of its own, so that the caller
// whose request finished returns at once.
func (b *decryptBatcher) release() {
	b.mu.Lock()
	if len(b.queue) == 0 {
		b.inFlight--
		b.mu.Unlock()
		return
	}
	n := min(len(b.queue), b.maxBatch)
	items := b.queue[:n:n]
	b.queue = append([]*batchItem(nil), b.queue[n:]...)
	b.mu.Unlock()
	go func() {
		b.send(items)
		b.release()
	}()
}

// send decrypts items with one batch request (or alone, when only one
// queued) and hands each its result.
func (b *decryptBatcher) send(items []*batchItem) {
	ctx, cancel := context.WithTimeout(context.Background(), b.hot.batchTimeout)
	defer cancel()
	if len(items) == 1 || b.off.Load() {
		for _, it := range items {
			it.deliver(b.hot.decrypt(ctx, it.ciphertext, it.ad))
		}
		return
	}
	results, err := b.hot.decryptBatch(ctx, items)
	if errors.Is(err, errNotBatch) {
		b.off.Store(true)
		for _, it := range items {
			it.deliver(b.hot.decrypt(ctx, it.ciphertext, it.ad))
		}
		return
	}
	for i, it := range items {
		if err != nil {
			it.deliver(nil, err)
		} else {
			it.deliver(results[i].plaintext, results[i].err)
		}
	}
}

// errNotBatch says that the server's answer to a batch request was not a
// batch response.
var errNotBatch = errors.New("vault answered a batch decrypt without batch results")

type batchResult struct {
	plaintext []byte
	err       error
}

// decryptBatch sends items as transit batch_input. A per-item failure
// comes back as that item's error, shaped like a 400 answer so that
// classify reads it as it reads a single call's.
func (t *transitHTTP) decryptBatch(ctx context.Context, items []*batchItem) ([]batchResult, error) {
	body := getBuf()
	defer putBuf(body)
	b := body.AvailableBuffer()
	b = append(b, `{"batch_input":[`...)
	for i, it := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"ciphertext":`...)
		b = strconv.AppendQuote(b, it.ciphertext)
		b = append(b, `,"associated_data":"`...)
		b = base64.StdEncoding.AppendEncode(b, it.ad)
		b = append(b, `","reference":"`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, `"}`...)
	}
	b = append(b, `]}`...)
	body.Write(b)
	var out struct {
		Data struct {
			BatchResults []struct {
				Plaintext base64Bytes `json:"plaintext"`
				Error     string      `json:"error"`
				Reference *string     `json:"reference"`
			} `json:"batch_results"`
		} `json:"data"`
	}
	// When every item failed, transit answers 400 with the items' errors
	// in the batch results: that answer is a batch response too.
	err := t.eps.do(ctx, func(i int) error {
		return t.postTo(ctx, t.eps.at(i, t.decPath), body.Bytes(), &out, func() bool { return len(out.Data.BatchResults) > 0 })
	})
	if err != nil {
		for _, r := range out.Data.BatchResults {
			clear(r.Plaintext)
		}
		return nil, err
	}
	if len(out.Data.BatchResults) != len(items) {
		for _, r := range out.Data.BatchResults {
			clear(r.Plaintext)
		}
		return nil, errNotBatch
	}
	results := make([]batchResult, len(items))
	for i, r := range out.Data.BatchResults {
		// Results come in the order of batch_input; where the server
		// echoes each item's reference, it must agree.
		if r.Reference != nil && *r.Reference != strconv.Itoa(i) {
			for _, r := range out.Data.BatchResults {
				clear(r.Plaintext)
			}
			return nil, errors.New("vault batch decrypt answered out of order")
		}
		switch {
		case r.Error != "":
			clear(r.Plaintext)
			results[i].err = &api.ResponseError{HTTPMethod: http.MethodPost, URL: t.decPath, StatusCode: http.StatusBadRequest, Errors: []string{r.Error}}
		case r.Plaintext == nil:
			results[i].err = errors.New("vault decrypt response has no plaintext")
		default:
			results[i].plaintext = r.Plaintext
		}
	}
	return results, nil
}
