//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/test/cluster"
)

// TestPluginCrash SIGKILLs kms-plugin under a steady stream of Secret writes
// and reads, then restarts it. kube-apiserver keeps a DEK seed for writes
// for 3 minutes after its last good Status and caches decrypted seeds for
// reads, so no operation may fail while the plugin is down for less than
// that, and every acknowledged write must read back afterwards.
func TestPluginCrash(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	if !c.CanKillPlugin() {
		t.Skip("this cluster has no way to kill the plugin (set KMS_E2E_KILL_PLUGIN)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ns := c.Namespace(t)
	keyID, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}

	l := newLoad(c, ns)
	for i := range 20 {
		name := fmt.Sprintf("seed-%d", i)
		value := secretValue(t)
		createSecret(ctx, t, c, ns, name, value)
		l.acked[name] = value
		l.readable = append(l.readable, name)
	}

	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() { l.write(loadCtx, w) })
		wg.Go(func() { l.read(loadCtx) })
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopLoad()
			wg.Wait()
			stopped = true
		}
	}
	defer stop()

	const minOps = 20
	l.waitWrites(ctx, t, phaseUp, minOps)

	l.setPhase(phaseDown)
	if err := c.KillPlugin(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Local() {
		// Keep the plugin down until kube-apiserver itself has seen it
		// fail, so that the writes below really ran on the cached seed.
		err := cluster.Poll(ctx, time.Second, 90*time.Second, "kube-apiserver sees the plugin down", func(ctx context.Context) (bool, error) {
			err := c.ProbeKMS(ctx)
			return err != nil, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	l.waitWrites(ctx, t, phaseDown, minOps)

	if err := c.StartPlugin(ctx); err != nil {
		t.Fatal(err)
	}
	l.setPhase(phaseRestarted)
	err = cluster.Poll(ctx, time.Second, 2*time.Minute, "kube-apiserver sees the plugin healthy again", func(ctx context.Context) (bool, error) {
		err := c.ProbeKMS(ctx)
		return err == nil, err
	})
	if err != nil {
		t.Fatal(err)
	}
	l.waitWrites(ctx, t, phaseRestarted, minOps)
	stop()

	for _, p := range []string{phaseUp, phaseDown, phaseRestarted} {
		s := l.stats[p]
		t.Logf("plugin %-9s writes ok %4d failed %d, reads ok %4d failed %d", p, s.writesOK, s.writesFailed, s.readsOK, s.readsFailed)
		if s.writesFailed+s.readsFailed > 0 {
			t.Errorf("plugin %s: %d writes and %d reads failed; first error: %v", p, s.writesFailed, s.readsFailed, s.firstErr)
		}
	}

	// Every write the apiserver acknowledged reads back, and is stored
	// encrypted under the plugin's key.
	list, err := c.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	for _, s := range list.Items {
		got[s.Name] = s.Data["value"]
	}
	lost := 0
	for name, value := range l.acked {
		if v, ok := got[name]; !ok || !bytes.Equal(v, value) {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged secret %s/%s reads %q (present %v), want %q", ns, name, v, ok, value)
			}
		}
	}
	raw, err := c.Etcd.Get(ctx, c.EtcdPrefix+"/secrets/"+ns+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	notEncrypted := 0
	for _, kv := range raw.Kvs {
		obj, err := c.Encrypted(kv.Value)
		if err != nil || obj.KeyID != keyID {
			notEncrypted++
			if notEncrypted <= 5 {
				t.Errorf("etcd %s: keyID %q, err %v; want keyID %q", kv.Key, obj.GetKeyID(), err, keyID)
			}
		}
	}
	t.Logf("acknowledged writes %d (including %d seeds), read back intact %d, lost %d; etcd values %d, not encrypted under %q: %d",
		len(l.acked), 20, len(l.acked)-lost, lost, len(raw.Kvs), keyID, notEncrypted)
}

const (
	phaseUp        = "up"
	phaseDown      = "down"
	phaseRestarted = "restarted"
)

type opStats struct {
	writesOK, writesFailed, readsOK, readsFailed int
	firstErr                                     error
}

// load writes new Secrets and reads acknowledged ones, counting outcomes by
// the plugin's phase when each operation started.
type load struct {
	c  *cluster.Cluster
	ns string

	mu       sync.Mutex
	phase    string
	stats    map[string]*opStats
	acked    map[string][]byte
	readable []string
}

func newLoad(c *cluster.Cluster, ns string) *load {
	return &load{
		c: c, ns: ns, phase: phaseUp,
		stats: map[string]*opStats{phaseUp: {}, phaseDown: {}, phaseRestarted: {}},
		acked: map[string][]byte{},
	}
}

func (l *load) setPhase(p string) {
	l.mu.Lock()
	l.phase = p
	l.mu.Unlock()
}

func (l *load) current() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.phase
}

// pace spaces a worker's operations so that the suite writes a few
// thousand Secrets, not tens of thousands, on a shared machine.
const pace = 25 * time.Millisecond

func (l *load) write(ctx context.Context, worker int) {
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		phase := l.current()
		name := fmt.Sprintf("load-%d-%d", worker, i)
		value := []byte(fmt.Sprintf("load-value-%d-%d-%x", worker, i, rand.Uint64()))
		_, err := l.c.Client.CoreV1().Secrets(l.ns).Create(ctx, newSecret(name, value), metav1.CreateOptions{})
		if ctx.Err() != nil {
			return // cancelled mid-call: neither a success nor a failure
		}
		l.mu.Lock()
		s := l.stats[phase]
		if err != nil {
			s.writesFailed++
			if s.firstErr == nil {
				s.firstErr = fmt.Errorf("create %s: %w", name, err)
			}
		} else {
			s.writesOK++
			l.acked[name] = value
			l.readable = append(l.readable, name)
		}
		l.mu.Unlock()
	}
}

func (l *load) read(ctx context.Context) {
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		l.mu.Lock()
		phase := l.phase
		name := l.readable[rand.IntN(len(l.readable))]
		want := l.acked[name]
		l.mu.Unlock()
		got, err := l.c.Client.CoreV1().Secrets(l.ns).Get(ctx, name, metav1.GetOptions{})
		if ctx.Err() != nil {
			return
		}
		if err == nil && !bytes.Equal(got.Data["value"], want) {
			err = fmt.Errorf("value %q, want %q", got.Data["value"], want)
		}
		l.mu.Lock()
		s := l.stats[phase]
		if err != nil {
			s.readsFailed++
			if s.firstErr == nil {
				s.firstErr = fmt.Errorf("get %s: %w", name, err)
			}
		} else {
			s.readsOK++
		}
		l.mu.Unlock()
	}
}

// waitWrites waits until at least n writes and n reads have succeeded in
// phase, or any operation in it has failed.
func (l *load) waitWrites(ctx context.Context, t *testing.T, phase string, n int) {
	t.Helper()
	err := cluster.Poll(ctx, 100*time.Millisecond, 2*time.Minute, fmt.Sprintf("%d writes and reads with the plugin %s", n, phase), func(context.Context) (bool, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		s := l.stats[phase]
		if s.firstErr != nil {
			return true, nil // reported with the counts
		}
		return s.writesOK >= n && s.readsOK >= n, fmt.Errorf("%d writes, %d reads so far", s.writesOK, s.readsOK)
	})
	if err != nil {
		t.Fatal(err)
	}
}
