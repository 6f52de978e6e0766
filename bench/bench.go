// Package bench is a load generator for KMS v2 plugins: it drives any
// plugin's socket with a chosen operation and concurrency, records every
// call's latency, and compares the figures with a no-op KMS v2 server
// measured in the same run, so that results read as ratios to the floor
// that the socket and gRPC stack set, not as absolute times.
package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms/contract"
)

// Op is the operation a run measures.
type Op string

// Operations.
const (
	OpEncrypt   Op = "encrypt"
	OpDecrypt   Op = "decrypt"
	OpStatus    Op = "status"
	OpRoundTrip Op = "roundtrip" // Encrypt then Decrypt of the result
)

// ParseOp validates an operation name.
func ParseOp(s string) (Op, error) {
	switch op := Op(s); op {
	case OpEncrypt, OpDecrypt, OpStatus, OpRoundTrip:
		return op, nil
	}
	return "", fmt.Errorf("unknown operation %q: want encrypt, decrypt, status or roundtrip", s)
}

// Options configures one measurement.
type Options struct {
	Op            Op
	Concurrency   int
	Duration      time.Duration
	Warmup        time.Duration
	PlaintextSize int
	// Timeout bounds each call, like kube-apiserver's per-call timeout.
	Timeout time.Duration
	// PID, when not 0, is the process serving the calls (on this host):
	// the run reads its CPU time before and after the measured calls and
	// reports CPU per 1000 calls.
	PID int
}

// Validate checks the options.
func (o Options) Validate() error {
	switch {
	case o.Concurrency < 1:
		return errors.New("concurrency must be at least 1")
	case o.Duration <= 0:
		return errors.New("duration must be positive")
	case o.Warmup < 0:
		return errors.New("warm-up must not be negative")
	case o.PlaintextSize < 1 || o.PlaintextSize > contract.MaxCiphertextLen:
		return fmt.Errorf("plaintext size must be 1 to %d bytes", contract.MaxCiphertextLen)
	case o.Timeout <= 0:
		return errors.New("timeout must be positive")
	}
	_, err := ParseOp(string(o.Op))
	return err
}

// Result is what one measurement found.
type Result struct {
	Ops        int64         `json:"ops"`
	Errors     int64         `json:"errors"`
	FirstError string        `json:"first_error,omitempty"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	OpsPerSec  float64       `json:"ops_per_sec"`
	P50        time.Duration `json:"p50_ns"`
	P90        time.Duration `json:"p90_ns"`
	P99        time.Duration `json:"p99_ns"`
	Max        time.Duration `json:"max_ns"`
	// CPUMsPer1000 is the serving process's CPU time, in milliseconds, per
	// 1000 calls; 0 when Options.PID was not set.
	CPUMsPer1000 float64 `json:"cpu_ms_per_1000,omitempty"`
}

// Run warms up, then measures client for o.Duration with o.Concurrency
// workers, each issuing calls back to back.
func Run(ctx context.Context, client kmsapi.KeyManagementServiceClient, o Options) (Result, error) {
	if err := o.Validate(); err != nil {
		return Result{}, err
	}
	call, err := newCall(ctx, client, o)
	if err != nil {
		return Result{}, err
	}
	return measure(ctx, call, o)
}

// measure warms up, then drives call for o.Duration, sampling o.PID's CPU
// time around the measured calls.
func measure(ctx context.Context, call func(context.Context) error, o Options) (Result, error) {
	if o.Warmup > 0 {
		drive(ctx, call, o.Concurrency, o.Warmup, o.Timeout)
	}
	if o.PID == 0 {
		return drive(ctx, call, o.Concurrency, o.Duration, o.Timeout), nil
	}
	before, err := SampleProc(o.PID)
	if err != nil {
		return Result{}, err
	}
	r := drive(ctx, call, o.Concurrency, o.Duration, o.Timeout)
	after, err := SampleProc(o.PID)
	if err != nil {
		return Result{}, err
	}
	r.CPUMsPer1000 = CPUPer1000(before, after, float64(r.Ops))
	return r, nil
}

// RunFunc warms up, then measures call for o.Duration with o.Concurrency
// workers, like Run, for a call that is not a KMS v2 gRPC method (such as a
// provider called in process, or a backend's own API called directly).
// o.Op is ignored.
func RunFunc(ctx context.Context, call func(context.Context) error, o Options) (Result, error) {
	o.Op = OpStatus // any valid operation; call decides what runs
	if err := o.Validate(); err != nil {
		return Result{}, err
	}
	return measure(ctx, call, o)
}

// newCall prepares what every call of o.Op sends. Calls in flight carry
// distinct inputs: each Encrypt a plaintext of its own, each Decrypt a
// ciphertext of its own, because identical Decrypts may be coalesced by a
// plugin and would then measure the coalescing rather than the backend.
func newCall(ctx context.Context, client kmsapi.KeyManagementServiceClient, o Options) (func(context.Context) error, error) {
	pts := distinctPlaintexts(inputPool(o.Concurrency), o.PlaintextSize)
	var next atomic.Uint64
	pick := func() uint64 { return next.Add(1) % uint64(len(pts)) }
	switch o.Op {
	case OpStatus:
		req := &kmsapi.StatusRequest{}
		return func(ctx context.Context) error { _, err := client.Status(ctx, req); return err }, nil
	case OpEncrypt:
		reqs := make([]*kmsapi.EncryptRequest, len(pts))
		for i, pt := range pts {
			reqs[i] = &kmsapi.EncryptRequest{Plaintext: pt, Uid: "kmsctl-bench"}
		}
		return func(ctx context.Context) error { _, err := client.Encrypt(ctx, reqs[pick()]); return err }, nil
	case OpDecrypt:
		reqs := make([]*kmsapi.DecryptRequest, len(pts))
		for i, pt := range pts {
			cctx, cancel := context.WithTimeout(ctx, o.Timeout)
			enc, err := client.Encrypt(cctx, &kmsapi.EncryptRequest{Plaintext: pt, Uid: "kmsctl-bench"})
			cancel()
			if err != nil {
				return nil, fmt.Errorf("prepare %d distinct ciphertexts to decrypt: %w", len(pts), err)
			}
			reqs[i] = &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Annotations: enc.Annotations, Uid: "kmsctl-bench"}
		}
		return func(ctx context.Context) error {
			i := pick()
			resp, err := client.Decrypt(ctx, reqs[i])
			if err == nil && !bytes.Equal(resp.Plaintext, pts[i]) {
				return errors.New("decrypt returned the wrong plaintext")
			}
			return err
		}, nil
	default: // OpRoundTrip
		return func(ctx context.Context) error {
			pt := pts[pick()]
			enc, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: pt, Uid: "kmsctl-bench"})
			if err != nil {
				return err
			}
			resp, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Annotations: enc.Annotations, Uid: "kmsctl-bench"})
			if err == nil && !bytes.Equal(resp.Plaintext, pt) {
				return errors.New("decrypt returned the wrong plaintext")
			}
			return err
		}, nil
	}
}

// inputPool is how many distinct inputs a run cycles through: four per
// caller, at least 64, so that no two calls in flight share one.
func inputPool(concurrency int) int { return max(64, 4*concurrency) }

// distinctPlaintexts returns n plaintexts of size bytes that differ from
// one another as long as size bytes can count to n: each starts with a
// big-endian counter.
func distinctPlaintexts(n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		pt := bytes.Repeat([]byte{0x5a}, size)
		var c [8]byte
		binary.BigEndian.PutUint64(c[:], uint64(i))
		copy(pt, c[8-min(size, 8):])
		out[i] = pt
	}
	return out
}

// drive runs call from workers goroutines for d and summarises the calls.
func drive(ctx context.Context, call func(context.Context) error, workers int, d, timeout time.Duration) Result {
	type workerResult struct {
		lat      []time.Duration
		errs     int64
		firstErr error
	}
	results := make([]workerResult, workers)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[w]
			r.lat = make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				cctx, cancel := context.WithTimeout(ctx, timeout)
				err := call(cctx)
				cancel()
				if err != nil {
					// A failed call's latency says nothing about the
					// plugin's speed: percentiles are of successes.
					r.errs++
					if r.firstErr == nil {
						r.firstErr = err
					}
					continue
				}
				r.lat = append(r.lat, time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	var all []time.Duration
	res := Result{Elapsed: elapsed}
	for _, r := range results {
		all = append(all, r.lat...)
		res.Errors += r.errs
		if r.firstErr != nil && res.FirstError == "" {
			res.FirstError = r.firstErr.Error()
		}
	}
	res.Ops = int64(len(all)) + res.Errors
	if len(all) == 0 {
		return res
	}
	slices.Sort(all)
	res.OpsPerSec = float64(len(all)) / elapsed.Seconds()
	res.P50, res.P90, res.P99 = quantile(all, 0.50), quantile(all, 0.90), quantile(all, 0.99)
	res.Max = all[len(all)-1]
	return res
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
