package vaultserver

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
)

// Proxy is a reverse proxy on loopback in front of a server that counts
// the requests it forwards by method and path, so tests can tell how many
// Vault calls a provider made.
type Proxy struct {
	// URL is the proxy's address; give it to the provider as --vault-addr.
	URL string

	mu     sync.Mutex
	counts map[string]int
}

// NewProxy starts a counting proxy to target (an http:// URL) that stops
// when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatalf("proxy target %q: %v", target, err)
	}
	p := &Proxy{counts: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.counts[r.URL.Path]++
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// Count returns how many requests to path (such as
// "/v1/transit/decrypt/kms") went through, whatever their method.
func (p *Proxy) Count(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[path]
}
