package vault

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"
)

// transitHTTP is the hot path: transit encrypt and decrypt, one HTTP
// request each. The request body is built in one buffer and the answer is
// decoded straight into a struct, with no per-call maps, no SDK request
// object and no copy of the client's configuration; the SDK keeps
// everything that is not per-request (login, token renewal, key metadata,
// key management). Buffers that held a DEK seed are zeroed before they go
// back to their pool.
type transitHTTP struct {
	// rt is called directly, not through an http.Client: the client
	// copies every request's headers to be ready for redirects, which
	// transit answers rarely (a standby that does not forward); postTo
	// follows those itself.
	rt        http.RoundTripper
	eps       *endpoints
	encPath   string // /v1/<mount>/encrypt/<key>
	decPath   string // /v1/<mount>/decrypt/<key>
	namespace string
	token     atomic.Pointer[string]
	// batchTimeout bounds one batch request, which no single caller's
	// deadline owns.
	batchTimeout time.Duration
}

// maxTransitResponse bounds what the hot path reads of an answer: transit's
// are a few hundred bytes; anything this large is not transit.
const maxTransitResponse = 1 << 20

// maxRedirects bounds the redirects a call follows (a standby that
// redirects to the active node takes one).
const maxRedirects = 3

func newTransitHTTP(tr http.RoundTripper, eps *endpoints, mount, key, namespace string, timeout time.Duration) *transitHTTP {
	t := &transitHTTP{
		eps:          eps,
		batchTimeout: timeout,
		encPath:      "/v1/" + mount + "/encrypt/" + url.PathEscape(key),
		decPath:      "/v1/" + mount + "/decrypt/" + url.PathEscape(key),
		namespace:    namespace,
	}
	t.rt = tr
	empty := ""
	t.token.Store(&empty)
	return t
}

// redirectTarget is where a standby's redirect (307 or 308) sends a
// request: the active node, which becomes current when it is one of the
// configured ones. It never follows https to plain http, which would send
// the token in the clear.
func (t *transitHTTP) redirectTarget(resp *http.Response) (*url.URL, error) {
	loc, err := resp.Location()
	if err != nil {
		return nil, fmt.Errorf("vault answered HTTP %d without a usable Location", resp.StatusCode)
	}
	if resp.Request.URL.Scheme == "https" && loc.Scheme != "https" {
		return nil, errors.New("refused a redirect from https to plain http")
	}
	t.eps.prefer(loc)
	return loc, nil
}

func (t *transitHTTP) setToken(token string) { t.token.Store(&token) }

// bufPool holds request and response buffers.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func getBuf() *bytes.Buffer { return bufPool.Get().(*bytes.Buffer) }

// putBuf zeroes b's bytes (they may hold a DEK seed) and pools it.
func putBuf(b *bytes.Buffer) {
	clear(b.Bytes()[:b.Cap()])
	b.Reset()
	if b.Cap() <= 64<<10 {
		bufPool.Put(b)
	}
}

func (t *transitHTTP) encrypt(ctx context.Context, version int64, plaintext, ad []byte) (string, error) {
	body := getBuf()
	defer putBuf(body)
	// Grown to fit first, so that the appends below stay inside body's
	// memory (which putBuf zeroes) and leave no copy of the seed behind.
	body.Grow(96 + base64.StdEncoding.EncodedLen(len(plaintext)) + base64.StdEncoding.EncodedLen(len(ad)))
	b := body.AvailableBuffer()
	b = append(b, `{"plaintext":"`...)
	b = base64.StdEncoding.AppendEncode(b, plaintext)
	b = append(b, `","associated_data":"`...)
	b = base64.StdEncoding.AppendEncode(b, ad)
	b = append(b, `","key_version":`...)
	b = strconv.AppendInt(b, version, 10)
	b = append(b, '}')
	body.Write(b)
	var out struct {
		Data struct {
			Ciphertext string `json:"ciphertext"`
		} `json:"data"`
	}
	if err := t.post(ctx, t.encPath, body.Bytes(), &out); err != nil {
		return "", err
	}
	if out.Data.Ciphertext == "" {
		return "", errors.New("vault encrypt response has no ciphertext")
	}
	return out.Data.Ciphertext, nil
}

func (t *transitHTTP) decrypt(ctx context.Context, ciphertext string, ad []byte) ([]byte, error) {
	body := getBuf()
	defer putBuf(body)
	body.Grow(96 + len(ciphertext) + base64.StdEncoding.EncodedLen(len(ad)))
	b := body.AvailableBuffer()
	b = append(b, `{"ciphertext":`...)
	b = strconv.AppendQuote(b, ciphertext)
	b = append(b, `,"associated_data":"`...)
	b = base64.StdEncoding.AppendEncode(b, ad)
	b = append(b, `"}`...)
	body.Write(b)
	var out struct {
		Data struct {
			Plaintext base64Bytes `json:"plaintext"`
		} `json:"data"`
	}
	if err := t.post(ctx, t.decPath, body.Bytes(), &out); err != nil {
		clear(out.Data.Plaintext)
		return nil, err
	}
	if out.Data.Plaintext == nil {
		return nil, errors.New("vault decrypt response has no plaintext")
	}
	return out.Data.Plaintext, nil
}

// base64Bytes decodes a JSON string of standard base64 into bytes, so that
// a plaintext never lives in an immutable string.
type base64Bytes []byte

func (p *base64Bytes) UnmarshalJSON(d []byte) error {
	if len(d) < 2 || d[0] != '"' || d[len(d)-1] != '"' || bytes.IndexByte(d, '\\') >= 0 {
		return errors.New("vault decrypt response plaintext is not a base64 string")
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(d)-2))
	n, err := base64.StdEncoding.Decode(out, d[1:len(d)-1])
	if err != nil {
		clear(out)
		return errors.New("vault decrypt response is not base64")
	}
	*p = out[:n]
	return nil
}

// post sends body to path on the current node, failing over to the
// others, and decodes a 2xx answer's JSON into out.
func (t *transitHTTP) post(ctx context.Context, path string, body []byte, out any) error {
	return t.eps.do(ctx, func(i int) error {
		return t.postTo(ctx, t.eps.at(i, path), body, out, nil)
	})
}

// postTo sends body to u and decodes a 2xx answer's JSON into out. When
// batchFailure is set, a 400 answer is decoded too, and is no error if
// batchFailure then says it carried batch results.
func (t *transitHTTP) postTo(ctx context.Context, target *url.URL, body []byte, out any, batchFailure func() bool) error {
	for redirects := 0; ; redirects++ {
		req := (&http.Request{
			Method:        http.MethodPost,
			URL:           target,
			Header:        t.header(),
			Body:          io.NopCloser(bytes.NewReader(body)),
			ContentLength: int64(len(body)),
			Host:          target.Host,
		}).WithContext(ctx)
		resp, err := t.rt.RoundTrip(req)
		if err != nil {
			return err
		}
		if resp.StatusCode == http.StatusTemporaryRedirect || resp.StatusCode == http.StatusPermanentRedirect {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxTransitResponse))
			resp.Body.Close()
			if redirects >= maxRedirects {
				return fmt.Errorf("stopped after %d redirects", maxRedirects)
			}
			if target, err = t.redirectTarget(resp); err != nil {
				return err
			}
			continue
		}
		return t.read(resp, out, batchFailure)
	}
}

// header is the headers of one transit request.
func (t *transitHTTP) header() http.Header {
	h := http.Header{
		"X-Vault-Token":   {*t.token.Load()},
		"X-Vault-Request": {"true"},
		"Content-Type":    {"application/json"},
	}
	if t.namespace != "" {
		h["X-Vault-Namespace"] = []string{t.namespace}
	}
	return h
}

// read decodes a 2xx answer's JSON into out (see postTo for batchFailure)
// and turns any other answer into an error.
func (t *transitHTTP) read(resp *http.Response, out any, batchFailure func() bool) error {
	defer resp.Body.Close()
	buf := getBuf()
	defer putBuf(buf)
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, maxTransitResponse+1)); err != nil {
		return err
	}
	if buf.Len() > maxTransitResponse {
		return fmt.Errorf("vault answered more than %d bytes", maxTransitResponse)
	}
	if resp.StatusCode == http.StatusBadRequest && batchFailure != nil &&
		json.Unmarshal(buf.Bytes(), out) == nil && batchFailure() {
		return nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return responseError(resp, buf.Bytes())
	}
	if err := json.Unmarshal(buf.Bytes(), out); err != nil {
		return errors.New("vault answered JSON that is not a transit response")
	}
	return nil
}

// responseError describes a non-2xx answer the way the SDK does, so that
// classify reads both paths' errors alike. Only Vault's error strings are
// kept (classify reads them, and repeats none).
func responseError(resp *http.Response, body []byte) *api.ResponseError {
	var e struct {
		Errors []string `json:"errors"`
	}
	re := &api.ResponseError{HTTPMethod: resp.Request.Method, URL: resp.Request.URL.Path, StatusCode: resp.StatusCode}
	if json.Unmarshal(body, &e) == nil {
		re.Errors = e.Errors
	} else {
		re.RawError = true
	}
	return re
}
