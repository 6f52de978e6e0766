package vault

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
)

// batchStandIn decrypts "vault:v1:<base64 plaintext>" (and refuses any
// ciphertext with "bad" in it) alone or as batch_input, after a delay, and
// records how many requests it served at once and in all.
type batchStandIn struct {
	srv                 *httptest.Server
	requests, batches   atomic.Int64
	inFlight, maxFlight atomic.Int64
}

func newBatchStandIn(t *testing.T, delay time.Duration, batchSupport bool) *batchStandIn {
	s := &batchStandIn{}
	open := func(ct string) (string, string) {
		if strings.Contains(ct, "bad") {
			return "", "cipher: message authentication failed"
		}
		return strings.TrimPrefix(ct, "vault:v1:"), ""
	}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.inFlight.Add(1)
		defer s.inFlight.Add(-1)
		for m := s.maxFlight.Load(); n > m; m = s.maxFlight.Load() {
			if s.maxFlight.CompareAndSwap(m, n) {
				break
			}
		}
		s.requests.Add(1)
		time.Sleep(delay)
		var in struct {
			Ciphertext string `json:"ciphertext"`
			Batch      []struct {
				Ciphertext string `json:"ciphertext"`
				Reference  string `json:"reference"`
			} `json:"batch_input"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if len(in.Batch) == 0 || !batchSupport {
			ct := in.Ciphertext
			if ct == "" && len(in.Batch) > 0 {
				ct = in.Batch[0].Ciphertext // a server that ignores batch_input
			}
			pt, e := open(ct)
			if e != "" {
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, `{"errors":[%q]}`, e)
				return
			}
			fmt.Fprintf(w, `{"data":{"plaintext":%q}}`, pt)
			return
		}
		s.batches.Add(1)
		type result struct {
			Plaintext string `json:"plaintext,omitempty"`
			Error     string `json:"error,omitempty"`
			Reference string `json:"reference"`
		}
		var out struct {
			Data struct {
				BatchResults []result `json:"batch_results"`
			} `json:"data"`
		}
		ok := 0
		for _, it := range in.Batch {
			pt, e := open(it.Ciphertext)
			if e == "" {
				ok++
			}
			out.Data.BatchResults = append(out.Data.BatchResults, result{pt, e, it.Reference})
		}
		if ok == 0 {
			w.WriteHeader(http.StatusBadRequest)
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func batchingBackend(t *testing.T, addr string) *apiBackend {
	be, err := newAPIBackend(Config{Addr: addr, Mount: "transit", Key: "kms", Timeout: 5 * time.Second, BatchDecrypt: true})
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// burst runs n concurrent Decrypts of distinct ciphertexts (every bad-th
// one refused) and checks each result.
func burst(t *testing.T, be *apiBackend, n, bad int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			pt := fmt.Sprintf("seed-%04d", i)
			ct := "vault:v1:" + base64.StdEncoding.EncodeToString([]byte(pt))
			refused := bad > 0 && i%bad == 0
			if refused {
				ct = "vault:v1:bad" + ct[9:]
			}
			got, err := be.Decrypt(context.Background(), ct, []byte("ad"))
			switch {
			case refused && !errors.Is(classify(opDecrypt, err), providers.ErrInvalidCiphertext):
				errs <- fmt.Errorf("Decrypt %d of a refused ciphertext = %q, %v; want invalid ciphertext", i, got, err)
			case !refused && (err != nil || string(got) != pt):
				errs <- fmt.Errorf("Decrypt %d = %q, %v; want %q", i, got, err, pt)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestBatchDecryptGroupsABurstAndKeepsEachResultItsOwn(t *testing.T) {
	s := newBatchStandIn(t, 20*time.Millisecond, true)
	be := batchingBackend(t, s.srv.URL)
	burst(t, be, 200, 7)
	if s.maxFlight.Load() > batchMaxInFlight {
		t.Errorf("%d decrypt requests in flight at once, want at most %d", s.maxFlight.Load(), batchMaxInFlight)
	}
	if s.batches.Load() == 0 || s.requests.Load() >= 200 {
		t.Errorf("%d requests (%d batches) for 200 concurrent Decrypts: the burst was not batched", s.requests.Load(), s.batches.Load())
	}
	t.Logf("200 Decrypts in %d requests, %d of them batches", s.requests.Load(), s.batches.Load())
}

func TestBatchDecryptOfOnlyRefusedCiphertexts(t *testing.T) {
	s := newBatchStandIn(t, 20*time.Millisecond, true)
	be := batchingBackend(t, s.srv.URL)
	burst(t, be, 40, 1) // every item refused: transit answers the batch with 400
	if s.batches.Load() == 0 {
		t.Error("no batch was sent")
	}
}

func TestBatchDecryptFallsBackWithoutBatchSupport(t *testing.T) {
	s := newBatchStandIn(t, 20*time.Millisecond, false)
	be := batchingBackend(t, s.srv.URL)
	burst(t, be, 60, 0)
	if !be.batch.off.Load() {
		t.Error("batching stayed on against a server that answers batch_input like a single decrypt")
	}
	burst(t, be, 20, 0)
}

func TestBatchDecryptAloneAddsNoRequest(t *testing.T) {
	s := newBatchStandIn(t, 0, true)
	be := batchingBackend(t, s.srv.URL)
	for i := range 20 {
		pt := fmt.Sprintf("seed-%d", i)
		got, err := be.Decrypt(context.Background(), "vault:v1:"+base64.StdEncoding.EncodeToString([]byte(pt)), nil)
		if err != nil || string(got) != pt {
			t.Fatalf("Decrypt = %q, %v", got, err)
		}
	}
	if s.requests.Load() != 20 || s.batches.Load() != 0 {
		t.Errorf("20 sequential Decrypts made %d requests, %d batches; want 20 single requests", s.requests.Load(), s.batches.Load())
	}
}

// TestBatchItemZeroesAPlaintextNobodyWaitsFor: a caller that gave up
// before its batch came back leaves no copy of its DEK seed behind; one
// whose result arrived first still gets it.
func TestBatchItemZeroesAPlaintextNobodyWaitsFor(t *testing.T) {
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	it := &batchItem{done: make(chan struct{})}
	if _, err := it.wait(gone); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait after the caller gave up = %v", err)
	}
	seed := []byte("seed-0123456789")
	it.deliver(seed, nil)
	if string(seed) != string(make([]byte, len(seed))) || it.plaintext != nil {
		t.Errorf("a plaintext delivered after its caller left = %q (item %q), want it zeroed", seed, it.plaintext)
	}

	it = &batchItem{done: make(chan struct{})}
	it.deliver([]byte("seed"), nil)
	if pt, err := it.wait(gone); err != nil || string(pt) != "seed" {
		t.Errorf("wait with a result already delivered = %q, %v; want the result", pt, err)
	}
}
