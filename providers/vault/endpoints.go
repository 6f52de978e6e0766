package vault

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

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
	urls   []string   // scheme://host[:port], no trailing slash
	parsed []*url.URL // urls, parsed once
	cur    atomic.Int64
	// downUntil holds, per node, when (Unix nanoseconds) a node that
	// failed may be tried first again; until then calls pass it over
	// unless every node failed.
	downUntil []atomic.Int64
	// moved is poked (without blocking) whenever the current node changes
	// because one failed, so that the provider looks for the new leader.
	moved chan struct{}
}

func newEndpoints(addrs []string) *endpoints {
	e := &endpoints{urls: addrs, moved: make(chan struct{}, 1), downUntil: make([]atomic.Int64, len(addrs))}
	for _, a := range addrs {
		u, err := url.Parse(a)
		if err != nil { // Config.Validate refuses such an address first
			u = &url.URL{}
		}
		e.parsed = append(e.parsed, u)
	}
	return e
}

// at returns the URL of path on node i.
func (e *endpoints) at(i int, path string) *url.URL {
	u := *e.parsed[i]
	u.Path = path
	return &u
}

// current returns the index of the node to use.
func (e *endpoints) current() int { return int(e.cur.Load()) }

// downFor is how long a node that failed is passed over. A node that is
// gone may cost a connect timeout per try on a real network.
const downFor = 5 * time.Second

// failed marks node i down and, unless another call already did, moves
// on to the next node that is not marked down (or simply the next one,
// when every node is).
func (e *endpoints) failed(i int) {
	n := len(e.urls)
	if n < 2 {
		return
	}
	now := time.Now().UnixNano()
	e.downUntil[i].Store(now + int64(downFor))
	next := (i + 1) % n
	for k := 1; k < n; k++ {
		if j := (i + k) % n; e.downUntil[j].Load() <= now {
			next = j
			break
		}
	}
	if e.cur.CompareAndSwap(int64(i), int64(next)) {
		select {
		case e.moved <- struct{}{}:
		default:
		}
	}
}

// prefer makes the node at u (any URL on it) current, if it is one of the
// configured nodes, and reports whether it is.
func (e *endpoints) prefer(u *url.URL) bool {
	for i, au := range e.parsed {
		if strings.EqualFold(au.Scheme, u.Scheme) && strings.EqualFold(au.Host, u.Host) {
			e.cur.Store(int64(i))
			e.downUntil[i].Store(0)
			return true
		}
	}
	return false
}

// do runs fn on the current node and, while the error says that node does
// not serve, on each other node in turn: at most one try per node.
func (e *endpoints) do(ctx context.Context, fn func(i int) error) error {
	var err error
	for range len(e.urls) {
		i := e.current()
		if err = fn(i); err == nil || !nodeDown(err) {
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
