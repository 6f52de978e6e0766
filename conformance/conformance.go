package conformance

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms/contract"
)

// Limits kube-apiserver checks on every reply (kms/CONTRACT.md; the Go
// source is k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2).
const (
	// MaxKeyIDLen is the longest key_id the apiserver accepts.
	MaxKeyIDLen = contract.MaxKeyIDLen
	// MaxCiphertextLen is the longest Encrypt ciphertext it accepts.
	MaxCiphertextLen = contract.MaxCiphertextLen
	// MaxAnnotationsLen bounds the annotations' keys and values together.
	MaxAnnotationsLen = contract.MaxAnnotationsLen
	// SeedLen is the size of the DEK seed the apiserver encrypts.
	SeedLen = 32

	apiVersion = contract.APIVersion
	healthzOK  = contract.HealthzOK
)

// Options tune a run. The zero value runs the checks as documented.
type Options struct {
	// Timeout bounds every call, like the timeout in the apiserver's
	// EncryptionConfiguration (default 3s).
	Timeout time.Duration
	// Concurrency is how many round trips run at once in the concurrent
	// check (default 64).
	Concurrency int
	// RoundTrips is how many round trips each concurrent worker makes
	// (default 8).
	RoundTrips int
	// StatusPolls is how many times key-id-stable polls Status, PollEvery
	// apart (defaults 5 and 200ms).
	StatusPolls int
	PollEvery   time.Duration
	// OnResult, if set, is called with each result as soon as it is known,
	// so that a command line can print progress.
	OnResult func(Result)
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 64
	}
	if o.RoundTrips <= 0 {
		o.RoundTrips = 8
	}
	if o.StatusPolls <= 0 {
		o.StatusPolls = 5
	}
	if o.PollEvery <= 0 {
		o.PollEvery = 200 * time.Millisecond
	}
	return o
}

// Result is the outcome of one check.
type Result struct {
	// Name identifies the check, as listed in docs/conformance.md.
	Name string `json:"name"`
	// Passed reports whether the plugin met the check.
	Passed bool `json:"passed"`
	// Detail says what was seen: a summary when passed, every violation
	// when failed.
	Detail string `json:"detail"`
}

// String is the line `kmsctl conformance` prints for r.
func (r Result) String() string {
	verdict := "PASS"
	if !r.Passed {
		verdict = "FAIL"
	}
	return fmt.Sprintf("%s  %-30s %s", verdict, r.Name, r.Detail)
}

// Report is the outcome of a run.
type Report struct {
	Results []Result `json:"results"`
}

// Passed counts the checks that passed.
func (r Report) Passed() int {
	n := 0
	for _, res := range r.Results {
		if res.Passed {
			n++
		}
	}
	return n
}

// Failed counts the checks that failed.
func (r Report) Failed() int { return len(r.Results) - r.Passed() }

// OK reports whether every check passed.
func (r Report) OK() bool { return r.Failed() == 0 }

// Summary is the final line: exactly "N passed, N failed".
func (r Report) Summary() string {
	return fmt.Sprintf("%d passed, %d failed", r.Passed(), r.Failed())
}

// Result returns the result of the check called name, if it ran.
func (r Report) Result(name string) (Result, bool) {
	for _, res := range r.Results {
		if res.Name == name {
			return res, true
		}
	}
	return Result{}, false
}

// Check names, in the order Run performs them.
const (
	CheckStatus               = "status"
	CheckKeyIDStable          = "key-id-stable"
	CheckEncryptLimits        = "encrypt-limits"
	CheckEncryptKeyID         = "encrypt-key-id-matches-status"
	CheckAnnotations          = "annotations"
	CheckRoundTripSeed        = "round-trip-seed"
	CheckRoundTripSizes       = "round-trip-sizes"
	CheckDistinctCiphertexts  = "distinct-ciphertexts"
	CheckHidesPlaintext       = "ciphertext-hides-plaintext"
	CheckDecryptTampered      = "decrypt-tampered"
	CheckDecryptTruncated     = "decrypt-truncated"
	CheckDecryptEmpty         = "decrypt-empty"
	CheckDecryptOversized     = "decrypt-oversized"
	CheckDecryptGarbage       = "decrypt-garbage"
	CheckDecryptWrongKeyID    = "decrypt-wrong-key-id"
	CheckConcurrentRoundTrips = "concurrent-round-trips"
	CheckHealthAfterAbuse     = "health-after-abuse"
)

// Checks lists every check's name in the order Run performs them.
var Checks = []string{
	CheckStatus, CheckKeyIDStable, CheckEncryptLimits, CheckEncryptKeyID,
	CheckAnnotations, CheckRoundTripSeed, CheckRoundTripSizes,
	CheckDistinctCiphertexts, CheckHidesPlaintext, CheckDecryptTampered,
	CheckDecryptTruncated, CheckDecryptEmpty, CheckDecryptOversized,
	CheckDecryptGarbage, CheckDecryptWrongKeyID, CheckConcurrentRoundTrips,
	CheckHealthAfterAbuse,
}

// RejectCodes are the gRPC codes that say "this input is bad" precisely
// enough for an operator: anything else is wrong for bad input. OK means
// the plugin accepted it; Unknown means it gave no code at all; Internal
// hides the cause; Unavailable and DeadlineExceeded claim a transient
// outage, which makes the apiserver retry and its operators chase the
// wrong problem.
var RejectCodes = []codes.Code{codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound, codes.OutOfRange}

// run holds what the checks learn as they go.
type run struct {
	client kmsapi.KeyManagementServiceClient
	opts   Options

	statusKeyID string                  // from the first good Status
	seed        []byte                  // the reference 32-byte seed
	ref         *kmsapi.EncryptResponse // its Encrypt reply, nil if Encrypt failed
}

// Run performs every check against client, in order, and returns the
// report. A check that depends on an earlier one that failed (no
// ciphertext to tamper with, say) fails too, naming the reason. Run stops
// early only when ctx ends.
func Run(ctx context.Context, client kmsapi.KeyManagementServiceClient, opts Options) Report {
	r := &run{client: client, opts: opts.withDefaults()}
	checks := []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{CheckStatus, r.checkStatus},
		{CheckKeyIDStable, r.checkKeyIDStable},
		{CheckEncryptLimits, r.checkEncryptLimits},
		{CheckEncryptKeyID, r.checkEncryptKeyID},
		{CheckAnnotations, r.checkAnnotations},
		{CheckRoundTripSeed, r.checkRoundTripSeed},
		{CheckRoundTripSizes, r.checkRoundTripSizes},
		{CheckDistinctCiphertexts, r.checkDistinct},
		{CheckHidesPlaintext, r.checkHidesPlaintext},
		{CheckDecryptTampered, r.checkTampered},
		{CheckDecryptTruncated, r.checkTruncated},
		{CheckDecryptEmpty, r.checkEmpty},
		{CheckDecryptOversized, r.checkOversized},
		{CheckDecryptGarbage, r.checkGarbage},
		{CheckDecryptWrongKeyID, r.checkWrongKeyID},
		{CheckConcurrentRoundTrips, r.checkConcurrent},
		{CheckHealthAfterAbuse, r.checkHealthAfterAbuse},
	}
	var rep Report
	for _, c := range checks {
		if ctx.Err() != nil {
			break
		}
		detail, err := c.fn(ctx)
		res := Result{Name: c.name, Passed: err == nil, Detail: detail}
		if err != nil {
			res.Detail = err.Error()
		}
		rep.Results = append(rep.Results, res)
		if r.opts.OnResult != nil {
			r.opts.OnResult(res)
		}
	}
	return rep
}

// call gives one request the per-call timeout.
func (r *run) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.opts.Timeout)
}

func (r *run) status(ctx context.Context) (*kmsapi.StatusResponse, error) {
	cctx, cancel := r.call(ctx)
	defer cancel()
	return r.client.Status(cctx, &kmsapi.StatusRequest{})
}

func (r *run) encrypt(ctx context.Context, pt []byte) (*kmsapi.EncryptResponse, error) {
	cctx, cancel := r.call(ctx)
	defer cancel()
	return r.client.Encrypt(cctx, &kmsapi.EncryptRequest{Plaintext: pt, Uid: newUID()})
}

func (r *run) decrypt(ctx context.Context, ct []byte, keyID string, ann map[string][]byte) (*kmsapi.DecryptResponse, error) {
	cctx, cancel := r.call(ctx)
	defer cancel()
	return r.client.Decrypt(cctx, &kmsapi.DecryptRequest{Ciphertext: ct, KeyId: keyID, Annotations: ann, Uid: newUID()})
}

// newUID is a random request uid, as the apiserver sends one per call.
func newUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// validKeyID checks the apiserver's rule for every key_id it receives.
func validKeyID(id string) error {
	switch {
	case id == "":
		return errors.New("key_id is empty")
	case len(id) > MaxKeyIDLen:
		return fmt.Errorf("key_id is %d bytes, over the %d-byte limit", len(id), MaxKeyIDLen)
	}
	return nil
}

// validEncryptResponse checks what the apiserver checks on every Encrypt
// reply: ciphertext and key_id sizes and the annotations.
func validEncryptResponse(resp *kmsapi.EncryptResponse) error {
	var errs []error
	switch n := len(resp.GetCiphertext()); {
	case n == 0:
		errs = append(errs, errors.New("ciphertext is empty"))
	case n > MaxCiphertextLen:
		errs = append(errs, fmt.Errorf("ciphertext is %d bytes, over the %d-byte limit", n, MaxCiphertextLen))
	}
	if err := validKeyID(resp.GetKeyId()); err != nil {
		errs = append(errs, err)
	}
	if err := validAnnotations(resp.GetAnnotations()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// validAnnotations applies the apiserver's own validation: every key a
// fully qualified domain name, keys and values at most 32 KiB together.
func validAnnotations(ann map[string][]byte) error {
	var errs []error
	total := 0
	keys := make([]string, 0, len(ann))
	for k := range ann {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if fe := validation.IsFullyQualifiedDomainName(field.NewPath("annotations"), k); len(fe) > 0 {
			errs = append(errs, fmt.Errorf("annotation key %q is not a fully qualified domain name", k))
		}
		total += len(k) + len(ann[k])
	}
	if total > MaxAnnotationsLen {
		errs = append(errs, fmt.Errorf("annotations are %d bytes, over the %d-byte limit", total, MaxAnnotationsLen))
	}
	return errors.Join(errs...)
}

// oneLine joins a multi-error into one line for the report.
func oneLine(err error) error {
	if err == nil {
		return nil
	}
	return errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))
}

func (r *run) checkStatus(ctx context.Context) (string, error) {
	st, err := r.status(ctx)
	if err != nil {
		return "", fmt.Errorf("calling Status: %s", describe(err))
	}
	var errs []error
	if st.GetVersion() != apiVersion {
		errs = append(errs, fmt.Errorf("version is %q, want %q", st.GetVersion(), apiVersion))
	}
	if st.GetHealthz() != healthzOK {
		errs = append(errs, fmt.Errorf("healthz is %q, want %q", st.GetHealthz(), healthzOK))
	}
	if err := validKeyID(st.GetKeyId()); err != nil {
		errs = append(errs, err)
	} else {
		r.statusKeyID = st.GetKeyId()
	}
	if len(errs) > 0 {
		return "", oneLine(errors.Join(errs...))
	}
	return fmt.Sprintf("version %s, healthz ok, key_id %q", apiVersion, st.GetKeyId()), nil
}

func (r *run) checkKeyIDStable(ctx context.Context) (string, error) {
	var ids []string
	for i := range r.opts.StatusPolls {
		if i > 0 {
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(r.opts.PollEvery):
			}
		}
		st, err := r.status(ctx)
		if err != nil {
			return "", fmt.Errorf("poll %d: calling Status: %s", i+1, describe(err))
		}
		if st.GetVersion() != apiVersion {
			return "", fmt.Errorf("poll %d: version changed to %q", i+1, st.GetVersion())
		}
		ids = append(ids, st.GetKeyId())
	}
	if distinct := slices.Compact(slices.Clone(ids)); len(distinct) != 1 {
		return "", fmt.Errorf("key_id changed across %d polls with no rotation: %q (each change makes the apiserver re-encrypt its DEK and mark objects stale)", len(ids), distinct)
	}
	if r.statusKeyID != "" && ids[0] != r.statusKeyID {
		return "", fmt.Errorf("key_id %q differs from the first Status' %q", ids[0], r.statusKeyID)
	}
	return fmt.Sprintf("%d polls, one key_id", len(ids)), nil
}

func (r *run) checkEncryptLimits(ctx context.Context) (string, error) {
	r.seed = randomBytes(SeedLen)
	resp, err := r.encrypt(ctx, r.seed)
	if err != nil {
		return "", fmt.Errorf("calling Encrypt(32-byte seed): %s", describe(err))
	}
	if err := validEncryptResponse(resp); err != nil {
		return "", oneLine(err)
	}
	r.ref = resp
	return fmt.Sprintf("ciphertext %d bytes, key_id %d bytes", len(resp.GetCiphertext()), len(resp.GetKeyId())), nil
}

var errNoRef = errors.New("no ciphertext to work with: Encrypt of the seed failed (see encrypt-limits)")

func (r *run) checkEncryptKeyID(ctx context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	before := r.statusKeyID
	resp, err := r.encrypt(ctx, randomBytes(SeedLen))
	if err != nil {
		return "", fmt.Errorf("calling Encrypt: %s", describe(err))
	}
	st, err := r.status(ctx)
	if err != nil {
		return "", fmt.Errorf("calling Status: %s", describe(err))
	}
	after := st.GetKeyId()
	switch {
	case r.ref.GetKeyId() == before && resp.GetKeyId() == after:
		return fmt.Sprintf("Encrypt and Status agree on %q", after), nil
	case before != after:
		return "", fmt.Errorf("key_id of Status changed from %q to %q during the check; re-run it outside a rotation", before, after)
	default:
		return "", fmt.Errorf("key_id from Encrypt is %q, from Status %q: the apiserver discards such a result and marks the plugin unhealthy", resp.GetKeyId(), after)
	}
}

func (r *run) checkAnnotations(context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	ann := r.ref.GetAnnotations()
	if err := validAnnotations(ann); err != nil {
		return "", oneLine(err)
	}
	if len(ann) == 0 {
		return "none returned", nil
	}
	return fmt.Sprintf("%d keys, all FQDNs, within %d bytes", len(ann), MaxAnnotationsLen), nil
}

func (r *run) roundTrip(ctx context.Context, pt []byte) error {
	enc, err := r.encrypt(ctx, pt)
	if err != nil {
		return fmt.Errorf("calling Encrypt(%d bytes): %s", len(pt), describe(err))
	}
	if err := validEncryptResponse(enc); err != nil {
		return fmt.Errorf("reply of Encrypt(%d bytes): %w", len(pt), oneLine(err))
	}
	dec, err := r.decrypt(ctx, enc.GetCiphertext(), enc.GetKeyId(), enc.GetAnnotations())
	if err != nil {
		return fmt.Errorf("calling Decrypt of a %d-byte plaintext: %s", len(pt), describe(err))
	}
	if !bytes.Equal(dec.GetPlaintext(), pt) {
		return fmt.Errorf("decrypting a %d-byte plaintext returned %d different bytes", len(pt), len(dec.GetPlaintext()))
	}
	return nil
}

func (r *run) checkRoundTripSeed(ctx context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	dec, err := r.decrypt(ctx, r.ref.GetCiphertext(), r.ref.GetKeyId(), r.ref.GetAnnotations())
	if err != nil {
		return "", fmt.Errorf("calling Decrypt: %s", describe(err))
	}
	if !bytes.Equal(dec.GetPlaintext(), r.seed) {
		return "", fmt.Errorf("decrypting returned %d bytes that are not the seed", len(dec.GetPlaintext()))
	}
	return "32-byte seed decrypts to itself", nil
}

// roundTripSizes are the plaintext sizes that must round trip besides the
// 32-byte seed: KMS v2 apiservers send 32, but plugins are also used by
// older apiservers and tools with other DEK sizes.
var roundTripSizes = []int{1, 16, 31, 33, 64, 128, 256}

func (r *run) checkRoundTripSizes(ctx context.Context) (string, error) {
	var errs []error
	for _, n := range roundTripSizes {
		if err := r.roundTrip(ctx, randomBytes(n)); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return "", oneLine(errors.Join(errs...))
	}
	return fmt.Sprintf("sizes %v round trip", roundTripSizes), nil
}

func (r *run) checkDistinct(ctx context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	const n = 8
	seen := map[string]int{string(r.ref.GetCiphertext()): 0}
	for i := 1; i <= n; i++ {
		resp, err := r.encrypt(ctx, r.seed)
		if err != nil {
			return "", fmt.Errorf("calling Encrypt: %s", describe(err))
		}
		if j, dup := seen[string(resp.GetCiphertext())]; dup {
			return "", fmt.Errorf("encryptions %d and %d of the same plaintext returned the same ciphertext: encryption must be randomized", j, i)
		}
		seen[string(resp.GetCiphertext())] = i
	}
	return fmt.Sprintf("%d encryptions of one seed, all different", n+1), nil
}

func (r *run) checkHidesPlaintext(context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	forms := map[string][]byte{
		"raw":       r.seed,
		"hex":       []byte(hex.EncodeToString(r.seed)),
		"base64":    []byte(base64.StdEncoding.EncodeToString(r.seed)),
		"base64url": []byte(base64.RawURLEncoding.EncodeToString(r.seed)),
	}
	places := map[string][]byte{"ciphertext": r.ref.GetCiphertext(), "key_id": []byte(r.ref.GetKeyId())}
	for k, v := range r.ref.GetAnnotations() {
		places["annotation "+k] = v
		places["annotation key "+k] = []byte(k)
	}
	var errs []error
	for _, pname := range sortedKeys(places) {
		for _, fname := range sortedKeys(forms) {
			if bytes.Contains(places[pname], forms[fname]) {
				errs = append(errs, fmt.Errorf("the plaintext (%s) appears in the %s", fname, pname))
			}
		}
	}
	if len(errs) > 0 {
		return "", oneLine(errors.Join(errs...))
	}
	return "seed absent from ciphertext, key_id and annotations", nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// badInput is one Decrypt request that must be refused.
type badInput struct {
	name       string
	ciphertext []byte
	keyID      string
}

// expectRejected sends every input and fails unless each is refused with
// one of RejectCodes. It never accepts a plaintext for a bad input, and
// says so loudly if the plaintext is not even the original.
func (r *run) expectRejected(ctx context.Context, inputs []badInput) (string, error) {
	var errs []error
	seen := map[codes.Code]bool{}
	for _, in := range inputs {
		resp, err := r.decrypt(ctx, in.ciphertext, in.keyID, r.ref.GetAnnotations())
		if err == nil {
			if bytes.Equal(resp.GetPlaintext(), r.seed) {
				errs = append(errs, fmt.Errorf("%s: accepted, returned the seed", in.name))
			} else {
				errs = append(errs, fmt.Errorf("%s: accepted, returned a WRONG plaintext (%d bytes)", in.name, len(resp.GetPlaintext())))
			}
			continue
		}
		code := status.Code(err)
		if !slices.Contains(RejectCodes, code) {
			errs = append(errs, fmt.Errorf("%s: code %s, want one of %v", in.name, code, RejectCodes))
			continue
		}
		seen[code] = true
	}
	if len(errs) > 0 {
		return "", oneLine(errors.Join(errs...))
	}
	var cs []string
	for _, c := range RejectCodes {
		if seen[c] {
			cs = append(cs, c.String())
		}
	}
	return fmt.Sprintf("%d inputs rejected (%s)", len(inputs), strings.Join(cs, ", ")), nil
}

func flip(b []byte, i int) []byte {
	out := slices.Clone(b)
	out[i] ^= 0x01
	return out
}

func (r *run) checkTampered(ctx context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	ct, id := r.ref.GetCiphertext(), r.ref.GetKeyId()
	positions := slices.Compact([]int{0, 1, len(ct) / 2, len(ct) - 1})
	var in []badInput
	for _, i := range positions {
		if i >= 0 && i < len(ct) {
			in = append(in, badInput{fmt.Sprintf("bit flipped in byte %d", i), flip(ct, i), id})
		}
	}
	in = append(in, badInput{"one byte appended", append(slices.Clone(ct), 0), id})
	return r.expectRejected(ctx, in)
}

func (r *run) checkTruncated(ctx context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	ct, id := r.ref.GetCiphertext(), r.ref.GetKeyId()
	var in []badInput
	for _, n := range slices.Compact([]int{len(ct) - 1, len(ct) / 2, 1}) {
		if n > 0 && n < len(ct) {
			in = append(in, badInput{fmt.Sprintf("first %d of %d bytes", n, len(ct)), ct[:n], id})
		}
	}
	if len(in) == 0 {
		return "", fmt.Errorf("ciphertext is only %d bytes: nothing to truncate", len(ct))
	}
	return r.expectRejected(ctx, in)
}

func (r *run) checkEmpty(ctx context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	return r.expectRejected(ctx, []badInput{
		{"empty ciphertext", nil, r.ref.GetKeyId()},
		{"empty ciphertext and key_id", nil, ""},
	})
}

func (r *run) checkOversized(ctx context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	ct, id := r.ref.GetCiphertext(), r.ref.GetKeyId()
	pad := func(n int) []byte { return append(slices.Clone(ct), randomBytes(max(0, n-len(ct)))...) }
	return r.expectRejected(ctx, []badInput{
		{fmt.Sprintf("%d bytes", MaxCiphertextLen+1), pad(MaxCiphertextLen + 1), id},
		{"64 KiB", pad(64 << 10), id},
	})
}

func (r *run) checkGarbage(ctx context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	id := r.ref.GetKeyId()
	return r.expectRejected(ctx, []badInput{
		{"random bytes of the ciphertext's length", randomBytes(len(r.ref.GetCiphertext())), id},
		{"64 random bytes", randomBytes(64), id},
		{"one zero byte", []byte{0}, id},
	})
}

func (r *run) checkWrongKeyID(ctx context.Context) (string, error) {
	if r.ref == nil {
		return "", errNoRef
	}
	ct, id := r.ref.GetCiphertext(), r.ref.GetKeyId()
	last := id[len(id)-1]
	// A plausible neighbour: the same key_id with its last character
	// changed, such as another version of the same key.
	other := id[:len(id)-1] + string(last^0x01)
	if last >= '0' && last <= '9' {
		other = id[:len(id)-1] + string(rune('0'+(last-'0'+1)%10))
	}
	return r.expectRejected(ctx, []badInput{
		{"empty key_id", ct, ""},
		{"key_id with a byte appended", ct, id + "0"},
		{fmt.Sprintf("key_id %q", other), ct, other},
		{"unrelated key_id", ct, "conformance.invalid/no-such-key"},
		{fmt.Sprintf("%d-byte key_id", MaxKeyIDLen+1), ct, id + strings.Repeat("x", MaxKeyIDLen+1-len(id))},
	})
}

func (r *run) checkConcurrent(ctx context.Context) (string, error) {
	var (
		mu        sync.Mutex
		errs      []error
		failures  int
		latencies []time.Duration
		wg        sync.WaitGroup
	)
	start := time.Now()
	for w := range r.opts.Concurrency {
		wg.Go(func() {
			for i := range r.opts.RoundTrips {
				pt := randomBytes(SeedLen)
				enc, err := r.encrypt(ctx, pt)
				var dec *kmsapi.DecryptResponse
				var d time.Duration
				if err == nil {
					t0 := time.Now()
					dec, err = r.decrypt(ctx, enc.GetCiphertext(), enc.GetKeyId(), enc.GetAnnotations())
					d = time.Since(t0)
				}
				if err == nil && !bytes.Equal(dec.GetPlaintext(), pt) {
					err = errors.New("decrypting returned a different plaintext")
				}
				mu.Lock()
				if err != nil {
					failures++
					if len(errs) < 3 {
						errs = append(errs, fmt.Errorf("worker %d round trip %d: %s", w, i, describe(err)))
					}
				} else {
					latencies = append(latencies, d)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	total := r.opts.Concurrency * r.opts.RoundTrips
	if failures > 0 {
		return "", oneLine(fmt.Errorf("%d of %d concurrent round trips failed: %w", failures, total, errors.Join(errs...)))
	}
	slices.Sort(latencies)
	p := func(q float64) time.Duration { return latencies[int(q*float64(len(latencies)-1))] }
	return fmt.Sprintf("%d round trips by %d workers in %s; Decrypt p50 %s, p99 %s",
		total, r.opts.Concurrency, time.Since(start).Round(time.Millisecond),
		p(0.5).Round(10*time.Microsecond), p(0.99).Round(10*time.Microsecond)), nil
}

func (r *run) checkHealthAfterAbuse(ctx context.Context) (string, error) {
	st, err := r.status(ctx)
	if err != nil {
		return "", fmt.Errorf("calling Status: %s", describe(err))
	}
	var errs []error
	if st.GetVersion() != apiVersion || st.GetHealthz() != healthzOK {
		errs = append(errs, fmt.Errorf("status is version %q, healthz %q; want %q, %q", st.GetVersion(), st.GetHealthz(), apiVersion, healthzOK))
	}
	if r.statusKeyID != "" && st.GetKeyId() != r.statusKeyID {
		errs = append(errs, fmt.Errorf("key_id changed from %q to %q", r.statusKeyID, st.GetKeyId()))
	}
	if r.ref != nil {
		dec, err := r.decrypt(ctx, r.ref.GetCiphertext(), r.ref.GetKeyId(), r.ref.GetAnnotations())
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("the first ciphertext no longer decrypts: %s", describe(err)))
		case !bytes.Equal(dec.GetPlaintext(), r.seed):
			errs = append(errs, errors.New("the first ciphertext now decrypts to a different plaintext"))
		}
	}
	if err := r.roundTrip(ctx, randomBytes(SeedLen)); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return "", oneLine(errors.Join(errs...))
	}
	return "healthy, same key_id, old and new ciphertexts decrypt", nil
}

// describe renders a gRPC error as "Code: message", keeping reports short.
func describe(err error) string {
	s, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	msg := s.Message()
	if len(msg) > 160 {
		msg = msg[:160] + "..."
	}
	return s.Code().String() + ": " + msg
}
