package vault

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/vault/api"
)

// endpoints are the addresses of a Vault cluster's nodes and which one the
// provider talks to now. Every call goes to the current node; a node that
// is down, sealed or between leaders (connection refused, a 5xx answer, no
// answer in time) makes the call move to the next node and try there, so a
// call fails only when no node serves. The current node drifts back to
// the active one as the provider learns where it is (sys/leader, or a
// standby's redirect), which saves the hop through a forwarding standby.
type endpoints struct {
	urls []string // scheme://host[:port], no trailing slash
	cur  atomic.Int32
	// moved is poked (without blocking) whenever the current node changes
	// because one failed, so that the provider looks for the new leader.
	moved chan struct{}
}

func newEndpoints(addrs []string) *endpoints {
	return &endpoints{urls: addrs, moved: make(chan struct{}, 1)}
}

// current returns the index and URL of the node to use.
func (e *endpoints) current() (int, string) {
	i := int(e.cur.Load())
	return i, e.urls[i]
}

// failed moves on from node i, unless another call already did.
func (e *endpoints) failed(i int) {
	if len(e.urls) > 1 && e.cur.CompareAndSwap(int32(i), int32((i+1)%len(e.urls))) {
		select {
		case e.moved <- struct{}{}:
		default:
		}
	}
}

// prefer makes the node at u (any URL on it) current, if it is one of the
// configured nodes, and reports whether it is.
func (e *endpoints) prefer(u *url.URL) bool {
	for i, a := range e.urls {
		if au, err := url.Parse(a); err == nil && strings.EqualFold(au.Scheme, u.Scheme) && strings.EqualFold(au.Host, u.Host) {
			e.cur.Store(int32(i))
			return true
		}
	}
	return false
}

// do runs fn on the current node and, while the error says that node does
// not serve, on each other node in turn: at most one try per node.
func (e *endpoints) do(ctx context.Context, fn func(i int, base string) error) error {
	var err error
	for range len(e.urls) {
		i, base := e.current()
		if err = fn(i, base); err == nil || !nodeDown(err) {
			return err
		}
		e.failed(i)
		if ctx.Err() != nil {
			return err
		}
	}
	return err
}

// nodeDown reports whether err says that the node did not serve the
// request, so that another node may: no connection, no answer in time, or
// a 5xx (sealed, standby without a leader, overloaded proxy). A 4xx is the
// request's own fault and would be the same anywhere; a cancelled call was
// given up by its caller.
func nodeDown(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	return true
}
