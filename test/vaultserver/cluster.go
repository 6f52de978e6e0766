package vaultserver

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// Cluster is a Vault HA cluster on loopback: nodes with integrated storage
// (raft), one unseal key, the first node initialized and the others
// joined to it as standbys, which forward requests to the active node.
type Cluster struct {
	Nodes     []*Server
	RootToken string
	UnsealKey string
}

// StartCluster starts an n-node cluster that stops when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{}
	bin := testbin.Tool(t, "vault", "vault")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range n {
		s := &Server{bin: bin, Dir: t.TempDir(), raftID: fmt.Sprintf("node%d", i)}
		s.firstLaunch(t, "http")
		if i == 0 {
			if err := s.initialize(); err != nil {
				t.Fatalf("initialize vault node0: %v", err)
			}
			c.RootToken, c.UnsealKey = s.RootToken, s.UnsealKey
			// Autopilot promotes a joined node to a voter once it has been
			// stable this long (10 s by default); until then the cluster
			// could not elect a leader without node0.
			if _, err := s.Client(t).Logical().WriteWithContext(ctx, "sys/storage/raft/autopilot/configuration",
				map[string]any{"server_stabilization_time": "1s"}); err != nil {
				t.Fatalf("configure autopilot: %v", err)
			}
		} else {
			s.RootToken, s.UnsealKey = c.RootToken, c.UnsealKey
			client, err := s.newClient("")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := client.Sys().RaftJoinWithContext(ctx, &api.RaftJoinRequest{LeaderAPIAddr: c.Nodes[0].Addr}); err != nil {
				t.Fatalf("join %s to the cluster: %v", s.raftID, err)
			}
			if err := s.unsealTo(ctx, http.StatusTooManyRequests); err != nil {
				t.Fatalf("unseal %s: %v", s.raftID, err)
			}
		}
		c.Nodes = append(c.Nodes, s)
	}
	c.waitVoters(t, 2*time.Minute)
	return c
}

// waitVoters waits until every node votes in raft, so that the cluster
// survives the loss of any one node.
func (c *Cluster) waitVoters(t testing.TB, timeout time.Duration) {
	t.Helper()
	root := c.Nodes[0].Client(t)
	var last string
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		s, err := root.Logical().Read("sys/storage/raft/configuration")
		if err != nil || s == nil {
			last = fmt.Sprint(err)
			continue
		}
		cfg, _ := s.Data["config"].(map[string]any)
		servers, _ := cfg["servers"].([]any)
		voters := 0
		for _, sv := range servers {
			if m, ok := sv.(map[string]any); ok && m["voter"] == true {
				voters++
			}
		}
		if voters == len(c.Nodes) {
			return
		}
		last = fmt.Sprintf("%d of %d nodes vote", voters, len(c.Nodes))
	}
	t.Fatalf("vault cluster: not every node votes after %s: %s", timeout, last)
}

// Addrs is every node's address, comma-separated, as --vault-addr takes it.
func (c *Cluster) Addrs() string {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr
	}
	return strings.Join(addrs, ",")
}

// Leader returns the index of the active node as the running nodes see it,
// or -1 while there is none (an election).
func (c *Cluster) Leader() int {
	for _, s := range c.Nodes {
		if !s.running() {
			continue
		}
		client, err := s.newClient("")
		if err != nil {
			continue
		}
		client.SetClientTimeout(time.Second)
		l, err := client.Sys().Leader()
		if err != nil || l.LeaderAddress == "" {
			continue
		}
		for i, n := range c.Nodes {
			if n.Addr == l.LeaderAddress && n.running() && c.active(n) {
				return i
			}
		}
	}
	return -1
}

// active reports whether s answers sys/health as the active node.
func (c *Cluster) active(s *Server) bool {
	hc := s.httpClient()
	hc.Timeout = time.Second
	resp, err := hc.Get(s.Addr + "/v1/sys/health")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// WaitLeader waits until a node other than not (-1: any) is active and
// returns it.
func (c *Cluster) WaitLeader(t testing.TB, not int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if i := c.Leader(); i >= 0 && i != not {
			return i
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("vault cluster: no new leader within %s", timeout)
	return -1
}

// Kill ends node i at once, as a crash would.
func (c *Cluster) Kill(i int) { c.Nodes[i].kill() }

// StepDown makes active node i give up leadership.
func (c *Cluster) StepDown(t testing.TB, i int) {
	t.Helper()
	if err := c.Nodes[i].Client(t).Sys().StepDown(); err != nil {
		t.Fatalf("step down vault %s: %v", c.Nodes[i].raftID, err)
	}
}

// Restart starts killed node i again and unseals it; it rejoins as a
// standby.
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	s := c.Nodes[i]
	if err := s.launch(); err != nil {
		t.Fatalf("restart vault %s: %v", s.raftID, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.unsealTo(ctx, http.StatusTooManyRequests); err != nil {
		t.Fatalf("unseal restarted vault %s: %v", s.raftID, err)
	}
}

func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}
