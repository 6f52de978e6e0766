package vault

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
)

// transitStandIn answers transit encrypt and decrypt like Vault does, and
// records the token and namespace of every request.
type transitStandIn struct {
	srv   *httptest.Server
	calls atomic.Int64
	token atomic.Value
	ns    atomic.Value
}

func newTransitStandIn(t *testing.T) *transitStandIn {
	s := &transitStandIn{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		s.token.Store(r.Header.Get("X-Vault-Token"))
		s.ns.Store(r.Header.Get("X-Vault-Namespace"))
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/transit/encrypt/kms":
			fmt.Fprint(w, `{"request_id":"x","data":{"ciphertext":"vault:v1:c2VhbGVk","key_version":1},"warnings":null}`)
		case "/v1/transit/decrypt/kms":
			fmt.Fprint(w, `{"data":{"plaintext":"c2VlZA=="}}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"errors":[]}`)
		}
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// refusedAddr is an address on loopback where nothing listens.
func refusedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "http://" + l.Addr().String()
	l.Close()
	return addr
}

// status answers every request with code.
func status(t *testing.T, code int, calls *atomic.Int64) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		w.WriteHeader(code)
		fmt.Fprint(w, `{"errors":["local node not active but active cluster node not found"]}`)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestHotPathSendsTokenAndNamespaceAndDecodes(t *testing.T) {
	s := newTransitStandIn(t)
	be, err := newAPIBackend(Config{Addr: s.srv.URL, Mount: "transit", Key: "kms", Namespace: "team-a", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	be.SetToken("hvs.first")
	ctx := context.Background()
	ct, err := be.Encrypt(ctx, 1, []byte("seed"), []byte("ad"))
	if err != nil || ct != "vault:v1:c2VhbGVk" {
		t.Fatalf("Encrypt = %q, %v", ct, err)
	}
	if s.token.Load() != "hvs.first" || s.ns.Load() != "team-a" {
		t.Errorf("token %q, namespace %q", s.token.Load(), s.ns.Load())
	}
	be.SetToken("hvs.second") // a renewed or new login reaches the hot path
	pt, err := be.Decrypt(ctx, ct, []byte("ad"))
	if err != nil || string(pt) != "seed" {
		t.Fatalf("Decrypt = %q, %v", pt, err)
	}
	if s.token.Load() != "hvs.second" {
		t.Errorf("token after SetToken: %q", s.token.Load())
	}
}

func TestHotPathFailsOverToTheNextNode(t *testing.T) {
	var sealedCalls atomic.Int64
	good := newTransitStandIn(t)
	down, sealed := refusedAddr(t), status(t, http.StatusServiceUnavailable, &sealedCalls)
	be, err := newAPIBackend(Config{Addr: down + "," + sealed + "," + good.srv.URL, Mount: "transit", Key: "kms", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := be.Encrypt(context.Background(), 1, []byte("seed"), nil); err != nil {
		t.Fatalf("Encrypt with one node down and one sealed: %v", err)
	}
	if i := be.eps.current(); i != 2 {
		t.Errorf("current node %d, want 2 (the one that served)", i)
	}
	if sealedCalls.Load() != 1 || good.calls.Load() != 1 {
		t.Errorf("calls: sealed %d, good %d; want 1 each", sealedCalls.Load(), good.calls.Load())
	}
	select {
	case <-be.eps.moved:
	default:
		t.Error("a failover did not signal that the current node moved")
	}
	// The next call goes straight to the node that served.
	if _, err := be.Decrypt(context.Background(), "vault:v1:c2VhbGVk", nil); err != nil {
		t.Fatal(err)
	}
	if sealedCalls.Load() != 1 || good.calls.Load() != 2 {
		t.Errorf("after failover: sealed %d, good %d calls; want 1 and 2", sealedCalls.Load(), good.calls.Load())
	}
}

func TestHotPathDoesNotFailOverOnARequestError(t *testing.T) {
	var badCalls, otherCalls atomic.Int64
	bad := status(t, http.StatusBadRequest, &badCalls)
	other := status(t, http.StatusOK, &otherCalls)
	be, err := newAPIBackend(Config{Addr: bad + "," + other, Mount: "transit", Key: "kms", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = be.Decrypt(context.Background(), "vault:v1:AAAA", nil)
	if !errors.Is(classify(opDecrypt, err), providers.ErrInvalidCiphertext) {
		t.Fatalf("Decrypt of a ciphertext the node refused: %v, want invalid ciphertext", err)
	}
	if badCalls.Load() != 1 || otherCalls.Load() != 0 {
		t.Errorf("calls %d and %d: a 400 is the request's fault and must not go to another node", badCalls.Load(), otherCalls.Load())
	}
}

func TestHotPathFollowsARedirectToTheActiveNode(t *testing.T) {
	active := newTransitStandIn(t)
	standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, active.srv.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(standby.Close)
	be, err := newAPIBackend(Config{Addr: standby.URL + "," + active.srv.URL, Mount: "transit", Key: "kms", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	be.SetToken("hvs.token")
	if _, err := be.Encrypt(context.Background(), 1, []byte("seed"), nil); err != nil {
		t.Fatalf("Encrypt through a redirecting standby: %v", err)
	}
	if active.token.Load() != "hvs.token" {
		t.Errorf("the active node got token %q", active.token.Load())
	}
	if i := be.eps.current(); i != 1 {
		t.Errorf("current node %d after a redirect to node 1", i)
	}
}

func TestHotPathRefusesARedirectToPlainHTTP(t *testing.T) {
	plain := newTransitStandIn(t)
	tlsStandby := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.srv.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(tlsStandby.Close)
	be, err := newAPIBackend(Config{Addr: tlsStandby.URL, Mount: "transit", Key: "kms", Timeout: 2 * time.Second, TLSSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	be.SetToken("hvs.token")
	if _, err := be.Encrypt(context.Background(), 1, []byte("seed"), nil); err == nil || !strings.Contains(err.Error(), "plain http") {
		t.Fatalf("Encrypt = %v, want the https-to-http redirect refused", err)
	}
	if plain.calls.Load() != 0 {
		t.Error("the token was sent over plain http after a redirect")
	}
}

func TestFollowLeaderPrefersTheActiveNode(t *testing.T) {
	var leader atomic.Value
	leader.Store("")
	nodes := make([]string, 3)
	for i := range nodes {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/sys/leader" {
				w.WriteHeader(http.StatusNotFound)
				return
			}
			fmt.Fprintf(w, `{"ha_enabled":true,"is_self":false,"leader_address":%q}`, leader.Load())
		}))
		t.Cleanup(srv.Close)
		nodes[i] = srv.URL
	}
	be, err := newAPIBackend(Config{Addr: strings.Join(nodes, ","), Mount: "transit", Key: "kms", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if found, err := be.FollowLeader(ctx); err != nil || found {
		t.Fatalf("during an election: FollowLeader = %v, %v; want not found", found, err)
	}
	leader.Store(nodes[2])
	if found, err := be.FollowLeader(ctx); err != nil || !found {
		t.Fatalf("FollowLeader = %v, %v", found, err)
	}
	if i := be.eps.current(); i != 2 {
		t.Errorf("current node %d, want the leader, 2", i)
	}
	u, _ := url.Parse("https://elsewhere:8200")
	leader.Store(u.String())
	if found, _ := be.FollowLeader(ctx); found {
		t.Error("a leader outside the configured nodes was followed")
	}
}

func TestBase64BytesRefusesWhatIsNotAPlainBase64String(t *testing.T) {
	for _, in := range []string{`"c2VlZA=="`, `"c2Vl\u005aA=="`, `"not base64!"`, `12`, `"`, `null`} {
		var b base64Bytes
		err := b.UnmarshalJSON([]byte(in))
		if ok := in == `"c2VlZA=="`; ok != (err == nil) {
			t.Errorf("UnmarshalJSON(%s) = %q, %v", in, b, err)
		}
	}
}
