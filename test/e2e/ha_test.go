//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/kms-plugin/kms-plugin/test/cluster"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// TestHAKeySafety runs kmsctl rotate --backend local on a control plane
// laid out like an HA kubeadm one (one etcd, three kube-apiservers, three
// kms-plugins, each on its own copy of the keyring) and makes, on purpose,
// the operator mistakes that used to split or lose keys:
//
//   - (b) a plugin that never reloads (--keyring-reload-interval 0): rotate
//     stops before promote, names it, promotes nothing;
//   - (d) a plugin that is down: rotate waits, times out, promotes nothing;
//     once it is back, the same command resumes and completes;
//   - (a) that rotation runs to the end with --retire, and every Secret
//     written through each apiserver reads back through every other one,
//     before and after;
//   - (c) an independent "keyring add" on every node: rotate refuses before
//     promote, naming the node that differs;
//   - (e) after prune + rotate, a restored backup + rotate and the
//     independent adds, no two distinct keys share a key_id, in the
//     keyring files or among the key_ids stored in etcd.
//
// The admin API shares the socket with KMS v2 throughout: the apiservers
// keep encrypting and decrypting through it.
func TestHAKeySafety(t *testing.T) {
	h := cluster.StartHA(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	e := &haEnv{h: h, kubeconfig: h.Kubeconfig(t), ns: "ha-e2e", ledger: map[string]map[string]bool{}}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}
	if err := cluster.Poll(ctx, 500*time.Millisecond, time.Minute, "create namespace", func(ctx context.Context) (bool, error) {
		_, err := h.Nodes[0].Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		return err == nil, err
	}); err != nil {
		t.Fatal(err)
	}
	backup, err := os.ReadFile(h.Nodes[0].Keyring)
	if err != nil {
		t.Fatal(err)
	}
	e.writeThroughEach(ctx, t, "before")
	// Admin calls on the KMS socket while the apiservers use it.
	for _, nd := range h.Nodes {
		r := e.mustKmsctl(ctx, t, "status", "--endpoint", nd.Endpoint, "-o", "json")
		if !strings.Contains(r.Stdout, `"provider": "local"`) || !strings.Contains(r.Stdout, `"check"`) {
			t.Errorf("kmsctl status on %s does not show what the plugin loaded:\n%s", nd.Name, r)
		}
	}
	e.crossRead(ctx, t)
	e.record(t)
	v1 := e.primaryKeyID(t, h.Nodes[0].Keyring)

	// (b) node-2's plugin never reloads: nothing is promoted.
	stateDir := filepath.Join(t.TempDir(), "rotate-1")
	if err := h.Nodes[2].RestartPlugin(ctx, "--keyring-reload-interval", "0"); err != nil {
		t.Fatal(err)
	}
	r := e.kmsctl(ctx, e.rotateArgs(stateDir, "--plugin-timeout", "8s")...)
	if r.Err == nil || !strings.Contains(r.Stdout, h.Nodes[2].Endpoint) || !strings.Contains(r.Stdout, "hot reload is off") || !strings.Contains(r.Stdout, "nothing was promoted") {
		t.Fatalf("rotate with a plugin that never reloads: %v; want a refusal naming %s and its hot reload\n%s", r.Err, h.Nodes[2].Endpoint, r)
	}
	e.wantPrimary(t, v1)
	e.crossRead(ctx, t)
	if err := h.Nodes[2].RestartPlugin(ctx); err != nil {
		t.Fatal(err)
	}

	// (d) node-1's plugin is down: rotate waits, times out, promotes
	// nothing; back up, the same command resumes and finishes.
	if err := h.Nodes[1].KillPlugin(); err != nil {
		t.Fatal(err)
	}
	r = e.kmsctl(ctx, e.rotateArgs(stateDir, "--plugin-timeout", "8s")...)
	if r.Err == nil || !strings.Contains(r.Stdout, h.Nodes[1].Endpoint) || !strings.Contains(r.Stdout, "timed out") || !strings.Contains(r.Stdout, "nothing was promoted") {
		t.Fatalf("rotate with a plugin down: %v; want it to time out naming %s\n%s", r.Err, h.Nodes[1].Endpoint, r)
	}
	e.wantPrimary(t, v1)
	if err := h.Nodes[1].StartPlugin(ctx); err != nil {
		t.Fatal(err)
	}
	e.crossRead(ctx, t)

	// (a) the same command, now with --retire, runs to the end.
	r = e.kmsctl(ctx, e.rotateArgs(stateDir, "--retire")...)
	if r.Err != nil || !strings.Contains(r.Stdout, "Resuming") {
		t.Fatalf("rotate --retire after the plugin came back: %v\n%s", r.Err, r)
	}
	for _, nd := range h.Nodes {
		if !strings.Contains(r.Stdout, "plugin "+nd.Endpoint+" has loaded") {
			t.Errorf("rotate promoted without %s reporting the new key:\n%s", nd.Endpoint, r)
		}
	}
	t.Logf("rotate --retire:\n%s", r.Stdout)
	v2 := e.primaryKeyID(t, h.Nodes[0].Keyring)
	if v2 == v1 {
		t.Fatalf("primary is still %s after the rotation", v1)
	}
	e.wantPrimary(t, v2)
	e.crossRead(ctx, t)
	e.writeThroughEach(ctx, t, "after")
	e.crossRead(ctx, t)
	e.record(t)
	for _, key := range e.storedKeyIDs(ctx, t) {
		if key != v2 {
			t.Errorf("etcd holds a Secret under %s after rotate --retire, want all under %s", key, v2)
		}
	}

	// (c) an independent "keyring add" on every node (what the help once
	// said): the copies diverge under one version number, with different
	// key_ids, and rotate refuses before promote, naming a node.
	for _, nd := range h.Nodes {
		e.mustKmsctl(ctx, t, "keyring", "add", "--keyring", nd.Keyring)
	}
	e.record(t)
	r = e.kmsctl(ctx, e.rotateArgs(filepath.Join(t.TempDir(), "rotate-2"))...)
	if r.Err == nil || !strings.Contains(r.Stdout, h.Nodes[1].Keyring) || !strings.Contains(r.Stdout, "diverged") {
		t.Fatalf("rotate over diverged keyrings: %v; want a refusal naming %s\n%s", r.Err, h.Nodes[1].Keyring, r)
	}
	e.wantPrimary(t, v2)
	e.crossRead(ctx, t)
	// Repair as docs/keyring.md says: copy one file to every node. The
	// plugins that loaded the other key refuse the changed file (it would
	// change a key under them), so they are restarted.
	good, err := os.ReadFile(h.Nodes[0].Keyring)
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range h.Nodes[1:] {
		if err := os.WriteFile(nd.Keyring, good, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := nd.RestartPlugin(ctx); err != nil {
			t.Fatal(err)
		}
	}
	e.crossRead(ctx, t)

	// (e) prune then add, and a restored backup then add: new numbers and
	// key_ids, never an old one for another key.
	e.mustKmsctl(ctx, t, "keyring", "prune", "--keyring", h.Nodes[0].Keyring, "--version", "1")
	e.mustKmsctl(ctx, t, "keyring", "add", "--keyring", h.Nodes[0].Keyring)
	restored := filepath.Join(t.TempDir(), "restored.json")
	if err := os.WriteFile(restored, backup, 0o600); err != nil {
		t.Fatal(err)
	}
	e.mustKmsctl(ctx, t, "keyring", "add", "--keyring", restored)
	e.mustKmsctl(ctx, t, "keyring", "rotate", "--keyring", restored)
	e.recordFile(t, restored)
	e.record(t)
	for id, checks := range e.ledger {
		if len(checks) != 1 {
			t.Errorf("key_id %s names %d different keys (checks %v)", id, len(checks), checks)
		}
	}
	for _, key := range e.storedKeyIDs(ctx, t) {
		if checks := e.ledger[key]; len(checks) != 1 {
			t.Errorf("etcd holds key_id %s, which names %d keys across the keyrings", key, len(checks))
		}
	}
	if len(e.ledger) < 6 {
		t.Errorf("the ledger holds %d key_ids; the mistakes above should have made at least 6", len(e.ledger))
	}
}

// haEnv is what the HA test shares between its steps.
type haEnv struct {
	h          *cluster.HA
	kubeconfig string
	ns         string
	written    []haSecret
	// ledger maps every key_id seen in any keyring file to the check
	// values of the keys it named.
	ledger map[string]map[string]bool
}

type haSecret struct {
	name  string
	value []byte
}

func (e *haEnv) rotateArgs(stateDir string, extra ...string) []string {
	args := []string{"rotate", "--backend", "local", "--engine", "client", "--kubeconfig", e.kubeconfig, "--resources", "secrets",
		"--state-dir", stateDir, "--poll-interval", "500ms", "--apiserver-timeout", "4m", "--canary-namespace", e.ns}
	for _, nd := range e.h.Nodes {
		args = append(args, "--keyring", nd.Keyring, "--plugin-endpoint", nd.Endpoint, "--apiserver", nd.URL)
	}
	return append(append(args, e.h.EtcdFlags()...), extra...)
}

func (e *haEnv) kmsctl(ctx context.Context, args ...string) kmsctlResult {
	r := testbin.Command(ctx, e.h.Kmsctl(), args...)
	// rotate prints its progress and its refusal on stdout; both streams
	// are searched together.
	r.Stdout += r.Stderr
	return r
}

func (e *haEnv) mustKmsctl(ctx context.Context, t *testing.T, args ...string) kmsctlResult {
	t.Helper()
	r := e.kmsctl(ctx, args...)
	if r.Err != nil {
		t.Fatalf("%s", r)
	}
	return r
}

// writeThroughEach creates one Secret through each node's apiserver.
func (e *haEnv) writeThroughEach(ctx context.Context, t *testing.T, tag string) {
	t.Helper()
	for _, nd := range e.h.Nodes {
		s := haSecret{name: tag + "-via-" + nd.Name, value: secretValue(t)}
		err := cluster.Poll(ctx, 500*time.Millisecond, time.Minute, "write "+s.name, func(ctx context.Context) (bool, error) {
			_, err := nd.Client.CoreV1().Secrets(e.ns).Create(ctx, newSecret(s.name, s.value), metav1.CreateOptions{})
			return err == nil, err
		})
		if err != nil {
			t.Fatal(err)
		}
		e.written = append(e.written, s)
	}
}

// crossRead reads every Secret written so far through every apiserver.
func (e *haEnv) crossRead(ctx context.Context, t *testing.T) {
	t.Helper()
	for _, nd := range e.h.Nodes {
		for _, s := range e.written {
			got, err := nd.Client.CoreV1().Secrets(e.ns).Get(ctx, s.name, metav1.GetOptions{})
			if err != nil || !bytes.Equal(got.Data["value"], s.value) {
				t.Errorf("Secret %s read through %s: %v; want the value written", s.name, nd.Name, err)
			}
		}
	}
}

// keyringInfo is one version as kmsctl keyring list -o json prints it.
type keyringInfo struct {
	Version int64  `json:"version"`
	KeyID   string `json:"key_id"`
	State   string `json:"state"`
	Check   string `json:"check"`
}

func (e *haEnv) list(t *testing.T, path string) []keyringInfo {
	t.Helper()
	r := e.mustKmsctl(context.Background(), t, "keyring", "list", "--keyring", path, "-o", "json")
	var infos []keyringInfo
	if err := json.Unmarshal([]byte(r.Stdout), &infos); err != nil {
		t.Fatalf("keyring list %s: %v\n%s", path, err, r)
	}
	return infos
}

func (e *haEnv) primaryKeyID(t *testing.T, path string) string {
	t.Helper()
	for _, i := range e.list(t, path) {
		if i.State == "primary" {
			return i.KeyID
		}
	}
	t.Fatalf("%s has no primary version", path)
	return ""
}

// wantPrimary checks that every node's keyring has primary key_id id.
func (e *haEnv) wantPrimary(t *testing.T, id string) {
	t.Helper()
	for _, nd := range e.h.Nodes {
		if got := e.primaryKeyID(t, nd.Keyring); got != id {
			t.Errorf("%s's primary is %s, want %s (nothing promoted)", nd.Name, got, id)
		}
	}
}

// record adds every node's keyring to the ledger.
func (e *haEnv) record(t *testing.T) {
	t.Helper()
	for _, nd := range e.h.Nodes {
		e.recordFile(t, nd.Keyring)
	}
}

func (e *haEnv) recordFile(t *testing.T, path string) {
	t.Helper()
	for _, i := range e.list(t, path) {
		if e.ledger[i.KeyID] == nil {
			e.ledger[i.KeyID] = map[string]bool{}
		}
		e.ledger[i.KeyID][i.Check] = true
	}
}

// storedKeyIDs returns the key_id of every Secret of the test's namespace
// in etcd.
func (e *haEnv) storedKeyIDs(ctx context.Context, t *testing.T) []string {
	t.Helper()
	prefix := fmt.Sprintf("%s/secrets/%s/", e.h.EtcdPrefix, e.ns)
	resp, err := e.h.Etcd.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	want := "k8s:enc:kms:v2:" + e.h.ProviderName + ":"
	for _, kv := range resp.Kvs {
		rest, ok := bytes.CutPrefix(kv.Value, []byte(want))
		if !ok {
			t.Errorf("etcd %s is not under %s", kv.Key, want)
			continue
		}
		var obj kmstypes.EncryptedObject
		if err := proto.Unmarshal(rest, &obj); err != nil {
			t.Errorf("etcd %s: %v", kv.Key, err)
			continue
		}
		out = append(out, obj.KeyID)
	}
	if len(out) == 0 {
		t.Fatalf("no Secret of %s in etcd: the check would check nothing", e.ns)
	}
	return out
}
