//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/test/cluster"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// rotationEnv is the one cluster the kmsctl verify, migrate and rotate
// tests share, with what they need to drive kmsctl as an operator would.
type rotationEnv struct {
	c          *cluster.Cluster
	kubeconfig string
	plainNS    string // holds "plain", written before encryption was enabled
	ns         string // holds the bulk Secrets s-0000 ... s-NNNN
	count      int
	keys       []string // key_ids in the order they became current
}

// bulkSecrets is how many Secrets the rotation tests work on.
const bulkSecrets = 1100

// TestRotationCommands runs kmsctl verify, migrate and rotate against one
// local control plane holding more than 1000 Secrets. The subtests run in
// order and build on each other's state: each key rotation costs up to a
// minute of waiting for kube-apiserver, so they share them.
func TestRotationCommands(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Plaintext: true})
	if !c.Local() {
		t.Skip("needs a local cluster: it writes a Secret before enabling encryption")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	env := &rotationEnv{c: c, kubeconfig: c.Kubeconfig(t), count: bulkSecrets}

	env.plainNS = c.Namespace(t)
	createSecret(ctx, t, c, env.plainNS, "plain", secretValue(t))
	if err := c.EnableEncryption(ctx); err != nil {
		t.Fatal(err)
	}
	keyA, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	env.keys = append(env.keys, keyA)
	env.ns = c.Namespace(t)
	start := time.Now()
	createBulkSecrets(ctx, t, c, env.ns, env.count)
	t.Logf("created %d Secrets under %s in %s", env.count, keyA, time.Since(start).Round(time.Millisecond))

	// Key B: everything above is now under an old key or plaintext.
	keyB, err := c.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitWritesUnder(ctx, t, c, env.ns, keyB)
	env.keys = append(env.keys, keyB)

	runSteps(ctx, t, env, []envStep{
		{"verify/names-plaintext-and-old-key", testVerifyDetects},
		{"migrate/interrupted-and-resumed", testMigrateResume},
		{"migrate/concurrent-writer-and-deleter", testMigrateConcurrent},
		{"migrate/auto-without-controller", testMigrateAutoWithoutController},
		{"rotate/stepwise-resume-and-refused-retire", testRotateStepwise},
		{"rotate/full-retire", testRotateFull},
		{"migrate/throughput-vs-kubectl", testMigrateThroughput},
	})
}

// envStep is one subtest of a test that shares a rotationEnv.
type envStep struct {
	name string
	fn   func(context.Context, *testing.T, *rotationEnv)
}

// runSteps runs steps in order as subtests; each builds on the state the
// ones before left, so the first failure ends the test.
func runSteps(ctx context.Context, t *testing.T, env *rotationEnv, steps []envStep) {
	t.Helper()
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.fn(ctx, t, env) }) {
			t.Fatalf("%s failed; the later subtests depend on it", s.name)
		}
	}
}

// createBulkSecrets creates n Secrets s-0000 ... concurrently.
func createBulkSecrets(ctx context.Context, t *testing.T, c *cluster.Cluster, ns string, n int) {
	t.Helper()
	names := make(chan string)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range names {
				if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, newSecret(name, []byte("v-"+name)), metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("create %s: %w", name, err)
					return
				}
			}
		}()
	}
	for i := range n {
		names <- secretName(i)
	}
	close(names)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func secretName(i int) string { return fmt.Sprintf("s-%04d", i) }

// waitWritesUnder waits until kube-apiserver stores new writes under keyID.
func waitWritesUnder(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, keyID string) {
	t.Helper()
	start := time.Now()
	n := 0
	err := cluster.Poll(ctx, time.Second, 3*time.Minute, "new writes stored under "+keyID, func(ctx context.Context) (bool, error) {
		_ = c.ProbeKMS(ctx)
		n++
		name := fmt.Sprintf("probe-%d", n)
		if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, newSecret(name, []byte("probe")), metav1.CreateOptions{}); err != nil {
			return false, err
		}
		got, err := c.StoredKeyID(ctx, ns, name)
		_ = c.Client.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil {
			return false, err
		}
		return got == keyID, fmt.Errorf("stored under %q", got)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver writes under %s after %s", keyID, time.Since(start).Round(time.Second))
}

// kmsctlResult is what one kmsctl run printed and how it ended.
type kmsctlResult = testbin.Result

// kmsctl runs kmsctl with args and returns what it printed; a non-zero
// exit is in err, not a test failure.
func (e *rotationEnv) kmsctl(ctx context.Context, args ...string) kmsctlResult {
	return testbin.Command(ctx, e.c.Kmsctl(), args...)
}

// mustKmsctl runs kmsctl and fails t unless it exits 0.
func (e *rotationEnv) mustKmsctl(ctx context.Context, t *testing.T, args ...string) kmsctlResult {
	t.Helper()
	r := e.kmsctl(ctx, args...)
	if r.Err != nil {
		t.Fatalf("kmsctl %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// verifyArgs are kmsctl verify's arguments for this cluster's Secrets.
func (e *rotationEnv) verifyArgs(extra ...string) []string {
	return append(append([]string{"verify", "-q", "--resources", "secrets"}, e.c.EtcdFlags()...), extra...)
}

// verifyJSON is what kmsctl verify -o json prints.
type verifyJSON struct {
	Objects []struct {
		Key       string `json:"key"`
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		Type      string `json:"type"`
		KeyID     string `json:"key_id"`
		Offending bool   `json:"offending"`
	} `json:"objects"`
	Summary []struct {
		Type    string `json:"type"`
		KeyID   string `json:"key_id"`
		Objects int64  `json:"objects"`
	} `json:"summary"`
	Total         int64 `json:"total"`
	OffenderCount int64 `json:"offender_count"`
}

// verify runs kmsctl verify -o json with extra flags; ok says it exited 0.
func (e *rotationEnv) verify(ctx context.Context, t *testing.T, extra ...string) (v verifyJSON, ok bool) {
	t.Helper()
	r := e.kmsctl(ctx, e.verifyArgs(append(extra, "-o", "json")...)...)
	return parseVerify(t, r), r.Err == nil
}

// parseVerify reads what kmsctl verify -o json printed; a run that ended
// other than by exiting fails t.
func parseVerify(t *testing.T, r kmsctlResult) (v verifyJSON) {
	t.Helper()
	var exit *exec.ExitError
	if r.Err != nil && !errors.As(r.Err, &exit) {
		t.Fatalf("kmsctl verify: %s", r)
	}
	if err := json.Unmarshal([]byte(r.Stdout), &v); err != nil {
		t.Fatalf("parse kmsctl verify -o json: %v\n%s", err, r)
	}
	return v
}

// keyringVersions returns the keyring's versions by key_id with their state.
func (e *rotationEnv) keyringStates(ctx context.Context, t *testing.T) map[string]string {
	t.Helper()
	r := e.mustKmsctl(ctx, t, "keyring", "list", "--keyring", e.c.Keyring(), "-o", "json")
	var infos []struct {
		KeyID string `json:"key_id"`
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &infos); err != nil {
		t.Fatalf("parse keyring list: %v\n%s", err, r)
	}
	states := map[string]string{}
	for _, i := range infos {
		states[i.KeyID] = i.State
	}
	return states
}

// rotateArgs are kmsctl rotate's arguments for this cluster.
func (e *rotationEnv) rotateArgs(stateDir string, extra ...string) []string {
	args := []string{"rotate", "--backend", "local", "--engine", "client", "--keyring", e.c.Keyring(),
		"--plugin-endpoint", e.c.Endpoint(), "--kubeconfig", e.kubeconfig, "--resources", "secrets",
		"--state-dir", stateDir, "--poll-interval", "1s", "--reload-grace", "1500ms", "--apiserver-timeout", "3m"}
	return append(append(args, e.c.EtcdFlags()...), extra...)
}

// rotationState is the part of kmsctl rotate's state file the tests read.
type rotationState struct {
	Old struct {
		KeyID string `json:"key_id"`
	} `json:"old"`
	New *struct {
		KeyID string `json:"key_id"`
	} `json:"new"`
	Steps map[string]struct {
		Done bool `json:"done"`
	} `json:"steps"`
}

func readRotationState(t *testing.T, dir string) rotationState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s rotationState
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("parse state: %v\n%s", err, b)
	}
	return s
}

// testRotateStepwise runs kmsctl rotate one step at a time (--stop-after),
// each run resuming from the state the previous one left. After migrate, a
// Secret's old-key value is put back into etcd, as a restored backup or a
// lagging apiserver would: rotate --retire must then refuse to retire,
// name it and retire nothing; the next run migrates again and retires.
func testRotateStepwise(ctx context.Context, t *testing.T, e *rotationEnv) {
	c := e.c
	keyB := e.keys[1]
	stateDir := filepath.Join(t.TempDir(), "rotate")

	createSecret(ctx, t, c, e.ns, "straggler", []byte("straggler"))
	stragglerKey := "/registry/secrets/" + e.ns + "/straggler"
	oldRaw, err := c.Raw(ctx, "secrets", e.ns, "straggler")
	if err != nil {
		t.Fatal(err)
	}

	r := e.mustKmsctl(ctx, t, e.rotateArgs(stateDir, "--dry-run", "--retire")...)
	for _, want := range []string{"New rotation", "current key: " + keyB, "1. [todo] add-key", "7. [todo] retire"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("rotate --dry-run does not print %q:\n%s", want, r)
		}
	}
	if _, err := os.Stat(stateDir); err == nil {
		t.Errorf("rotate --dry-run created %s", stateDir)
	}

	var keyC string
	for i, step := range []string{"add-key", "promote-key", "wait-plugins", "wait-apiservers", "migrate"} {
		r := e.mustKmsctl(ctx, t, e.rotateArgs(stateDir, "--stop-after", step)...)
		if i > 0 && !strings.Contains(r.Stdout, "Resuming the rotation") {
			t.Errorf("rotate after %s does not resume:\n%s", step, r)
		}
		s := readRotationState(t, stateDir)
		for j, st := range []string{"add-key", "promote-key", "wait-plugins", "wait-apiservers", "migrate", "verify"} {
			if done := s.Steps[st].Done; done != (j <= i) {
				t.Fatalf("after --stop-after %s, state says %s done = %v:\n%s", step, st, done, r)
			}
		}
		if s.New == nil || s.Old.KeyID != keyB {
			t.Fatalf("state after %s: old %q, new %v; want old %q and a new key", step, s.Old.KeyID, s.New, keyB)
		}
		keyC = s.New.KeyID
		states := e.keyringStates(ctx, t)
		switch step {
		case "add-key":
			if states[keyC] != "active" || states[keyB] != "primary" {
				t.Errorf("after add-key: keyring states %v; want %s active, %s still primary", states, keyC, keyB)
			}
			if id, _ := c.KeyID(ctx); id != keyB {
				t.Errorf("after add-key the plugin already reports %s", id)
			}
		case "promote-key":
			if states[keyC] != "primary" || states[keyB] != "active" {
				t.Errorf("after promote-key: keyring states %v; want %s primary, %s active", states, keyC, keyB)
			}
		case "wait-plugins":
			if id, _ := c.KeyID(ctx); id != keyC {
				t.Errorf("after wait-plugins the plugin reports %s, want %s", id, keyC)
			}
		case "migrate":
			if id, err := c.StoredKeyID(ctx, e.ns, secretName(0)); err != nil || id != keyC {
				t.Errorf("after migrate, %s is stored under %q (%v), want %s", secretName(0), id, err, keyC)
			}
		}
	}
	e.keys = append(e.keys, keyC)

	// The straggler comes back under key B.
	if _, err := c.Etcd.Put(ctx, stragglerKey, string(oldRaw)); err != nil {
		t.Fatal(err)
	}
	r = e.kmsctl(ctx, e.rotateArgs(stateDir, "--retire")...)
	if r.Err == nil {
		t.Fatalf("rotate --retire succeeded with %s still under %s:\n%s", stragglerKey, keyB, r)
	}
	for _, want := range []string{"refusing to retire", e.ns + "/straggler", "Nothing was retired"} {
		if !strings.Contains(r.Stdout+r.Stderr, want) {
			t.Errorf("refused retire does not say %q:\n%s", want, r)
		}
	}
	if states := e.keyringStates(ctx, t); states[keyB] != "active" {
		t.Errorf("after a refused retire, %s is %q, want active", keyB, states[keyB])
	}
	if s := readRotationState(t, stateDir); s.Steps["migrate"].Done {
		t.Errorf("after a failed verify the state still says migrate is done")
	}
	checkSecretReads(ctx, t, c, e.ns, "straggler", []byte("straggler"))

	// The next run migrates again, verifies and retires.
	r = e.mustKmsctl(ctx, t, e.rotateArgs(stateDir, "--retire")...)
	states := e.keyringStates(ctx, t)
	if states[keyC] != "primary" || states[keyB] != "retired" || states[e.keys[0]] != "retired" {
		t.Errorf("after rotate --retire: keyring states %v; want %s primary, %s and %s retired:\n%s", states, keyC, keyB, e.keys[0], r)
	}
	if v, ok := e.verify(ctx, t, "--expect-key-id", keyC); !ok {
		t.Errorf("after rotate --retire, verify --expect-key-id %s finds %d offenders", keyC, v.OffenderCount)
	}
	checkSecretReads(ctx, t, c, e.ns, "straggler", []byte("straggler"))

	// Finished means finished.
	r = e.mustKmsctl(ctx, t, e.rotateArgs(stateDir, "--retire")...)
	if !strings.Contains(r.Stdout, "is complete") {
		t.Errorf("rotate on a finished state does not say it is complete:\n%s", r)
	}
}

// testRotateFull is what done looks like: one kmsctl rotate --retire takes
// every Secret to a new key, and verify --expect-key-id then exits 0.
func testRotateFull(ctx context.Context, t *testing.T, e *rotationEnv) {
	c := e.c
	keyC := e.keys[len(e.keys)-1]
	stateDir := filepath.Join(t.TempDir(), "rotate")
	start := time.Now()
	r := e.mustKmsctl(ctx, t, e.rotateArgs(stateDir, "--retire")...)
	t.Logf("kmsctl rotate --retire took %s:\n%s", time.Since(start).Round(time.Second), r.Stdout)
	keyD, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if keyD == keyC {
		t.Fatalf("after kmsctl rotate the plugin still reports %s", keyC)
	}
	e.keys = append(e.keys, keyD)
	r = e.mustKmsctl(ctx, t, e.verifyArgs("--expect-key-id", keyD)...)
	t.Logf("kmsctl verify --expect-key-id %s:\n%s", keyD, r.Stdout)
	v, _ := e.verify(ctx, t, "--expect-key-id", keyD)
	if v.Total < int64(e.count) {
		t.Errorf("verify saw %d Secrets, want at least %d", v.Total, e.count)
	}
	for key, state := range e.keyringStates(ctx, t) {
		if want := map[bool]string{true: "primary", false: "retired"}[key == keyD]; state != want {
			t.Errorf("after rotate --retire, %s is %s, want %s", key, state, want)
		}
	}
	for _, i := range []int{0, e.count / 2, e.count - 1} {
		checkSecretReads(ctx, t, c, e.ns, secretName(i), []byte("v-"+secretName(i)))
	}
}

// TestRotateVault runs one kmsctl rotate --retire on the Vault backend:
// transit rotation, the wait for the plugin and kube-apiserver, migrate,
// verify, and min_decryption_version raised to the new version.
func TestRotateVault(t *testing.T) {
	if cluster.UsesExistingCluster() {
		t.Skip("needs a local cluster: it runs kms-plugin on a Vault the test starts")
	}
	v := startVault(t)
	c := cluster.Start(t, cluster.Options{
		Plugins:          []cluster.PluginSpec{v.plugin()},
		EncryptionConfig: "deploy/encryption-config/vault.yaml",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := &rotationEnv{c: c, kubeconfig: c.Kubeconfig(t), count: 200}
	e.ns = c.Namespace(t)
	createBulkSecrets(ctx, t, c, e.ns, e.count)
	oldKey, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}

	args := []string{"rotate", "--backend", "vault", "--engine", "client", "--vault-addr", v.srv.Addr, "--vault-mount", vaultMount,
		"--vault-key", vaultKey, "--vault-token-file", v.operatorToken,
		"--plugin-endpoint", c.Endpoint(), "--kubeconfig", e.kubeconfig, "--resources", "secrets",
		"--state-dir", filepath.Join(t.TempDir(), "rotate"), "--poll-interval", "1s", "--apiserver-timeout", "3m", "--retire"}
	out, err := v.run(ctx, append(args, c.EtcdFlags()...)...)
	if err != nil {
		t.Fatalf("kmsctl rotate --backend vault: %v\n%s", err, out)
	}
	t.Logf("kmsctl rotate --backend vault --retire:\n%s", out)
	newKey, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if newKey == oldKey {
		t.Fatalf("after kmsctl rotate the plugin still reports %s", oldKey)
	}
	if v, ok := e.verify(ctx, t, "--expect-key-id", newKey); !ok || v.Total < int64(e.count) {
		t.Errorf("verify --expect-key-id %s: exit 0 = %v, %d offenders of %d", newKey, ok, v.OffenderCount, v.Total)
	}
	s, err := v.srv.Client(t).Logical().Read(vaultMount + "/keys/" + vaultKey)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(s.Data["min_decryption_version"]), fmt.Sprint(v.latestVersion(t)); got != want {
		t.Errorf("min_decryption_version = %s after rotate --retire, want the latest version %s", got, want)
	}
	for _, i := range []int{0, e.count - 1} {
		checkSecretReads(ctx, t, c, e.ns, secretName(i), []byte("v-"+secretName(i)))
	}
}
