//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/test/cluster"
)

// svmControllers are what kube-controller-manager runs for the
// StorageVersionMigration engine: the migrator, and the garbage collector
// whose informers it reads the objects from (without it, the controller
// manager panics).
var svmControllers = []string{"garbage-collector-controller", "storage-version-migrator-controller"}

// bulkConfigMaps is how many ConfigMaps the StorageVersionMigration tests
// add to the bulk Secrets: a second configured resource.
const bulkConfigMaps = 300

// TestStorageVersionMigrationEngine runs kmsctl's storage-version-migration
// engine against a control plane whose kube-controller-manager runs only
// the migrator: a whole rotation over more than 1000 Secrets and the
// ConfigMaps, a migration under a concurrent writer, and a migration that
// the controller fails. The subtests share the cluster and its keys.
func TestStorageVersionMigrationEngine(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Controllers: svmControllers})
	if !c.Local() {
		t.Skip("needs a local cluster: it runs kube-controller-manager with chosen controllers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	env := &rotationEnv{c: c, kubeconfig: c.Kubeconfig(t), count: bulkSecrets}
	keyA, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	env.keys = append(env.keys, keyA)
	env.ns = c.Namespace(t)
	start := time.Now()
	createBulkSecrets(ctx, t, c, env.ns, env.count)
	createBulkConfigMaps(ctx, t, c, env.ns, bulkConfigMaps)
	t.Logf("created %d Secrets and %d ConfigMaps under %s in %s", env.count, bulkConfigMaps, keyA, time.Since(start).Round(time.Millisecond))

	runSteps(ctx, t, env, []envStep{
		{"rotate/secrets-and-configmaps", testSVMRotate},
		{"migrate/concurrent-writer", testSVMConcurrentWriter},
		{"migrate/failure-reported", testSVMFailure},
	})
}

// createBulkConfigMaps creates n ConfigMaps c-0000 ... in ns.
func createBulkConfigMaps(ctx context.Context, t *testing.T, c *cluster.Cluster, ns string, n int) {
	t.Helper()
	for i := range n {
		name := fmt.Sprintf("c-%04d", i)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"value": "v-" + name}}
		if _, err := c.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create configmap %s: %v", name, err)
		}
	}
}

// rotateKey makes a new key current in the plugin and waits until
// kube-apiserver writes under it, so that every stored object is stale.
func (e *rotationEnv) rotateKey(ctx context.Context, t *testing.T) string {
	t.Helper()
	key, err := e.c.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitWritesUnder(ctx, t, e.c, e.ns, key)
	e.keys = append(e.keys, key)
	return key
}

// svmVerify runs kmsctl verify over Secrets and ConfigMaps, expecting
// every object under keyID.
func (e *rotationEnv) svmVerify(ctx context.Context, t *testing.T, keyID string) verifyJSON {
	t.Helper()
	args := append(append([]string{"verify", "-q", "--resources", "secrets,configmaps"}, e.c.EtcdFlags()...), "--expect-key-id", keyID, "-o", "json")
	r := e.kmsctl(ctx, args...)
	v := parseVerify(t, r)
	if r.Err != nil || v.OffenderCount != 0 {
		t.Fatalf("verify --expect-key-id %s: %d offenders of %d objects: %s", keyID, v.OffenderCount, v.Total, r)
	}
	return v
}

// svmObjectsLeft lists the StorageVersionMigrations that kmsctl made.
func svmObjectsLeft(ctx context.Context, t *testing.T, c *cluster.Cluster) []string {
	t.Helper()
	l, err := c.Client.StoragemigrationV1().StorageVersionMigrations().List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=kmsctl"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range l.Items {
		names = append(names, m.Name)
	}
	return names
}

// testSVMRotate rotates end to end with the storage-version-migration
// engine for its migrate step; verify, inside rotate and after it, shows
// every Secret and ConfigMap on the new key_id.
func testSVMRotate(ctx context.Context, t *testing.T, e *rotationEnv) {
	c := e.c
	args := []string{"rotate", "--backend", "local", "--engine", "storage-version-migration", "--keyring", c.Keyring(),
		"--plugin-endpoint", c.Endpoint(), "--kubeconfig", e.kubeconfig, "--resources", "secrets,configmaps",
		"--state-dir", filepath.Join(t.TempDir(), "rotate"), "--poll-interval", "1s", "--reload-grace", "1500ms",
		"--apiserver-timeout", "3m", "--retire"}
	start := time.Now()
	r := e.mustKmsctl(ctx, t, append(args, c.EtcdFlags()...)...)
	t.Logf("kmsctl rotate --engine storage-version-migration --retire took %s:\n%s", time.Since(start).Round(time.Second), r.Stdout)
	for _, want := range []string{"secrets:", "configmaps:", "rewritten by a StorageVersionMigration"} {
		if !strings.Contains(r.Stdout+r.Stderr, want) {
			t.Errorf("rotate's report does not say %q", want)
		}
	}
	keyB, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if keyB == e.keys[0] {
		t.Fatalf("after kmsctl rotate the plugin still reports %s", keyB)
	}
	e.keys = append(e.keys, keyB)
	v := e.svmVerify(ctx, t, keyB)
	if want := int64(e.count + bulkConfigMaps); v.Total < want {
		t.Errorf("verify checked %d objects, want at least %d", v.Total, want)
	}
	if left := svmObjectsLeft(ctx, t, c); len(left) != 0 {
		t.Errorf("StorageVersionMigrations left after rotate: %v", left)
	}
	if states := e.keyringStates(ctx, t); states[e.keys[0]] != "retired" {
		t.Errorf("old key %s is %q after rotate --retire, want retired", e.keys[0], states[e.keys[0]])
	}
}

// testSVMConcurrentWriter migrates Secrets with the controller while
// another client keeps updating some of them: every Secret ends under the
// new key, and every update's value is the one stored.
func testSVMConcurrentWriter(ctx context.Context, t *testing.T, e *rotationEnv) {
	c := e.c
	keyC := e.rotateKey(ctx, t)

	stop := make(chan struct{})
	var (
		mu      sync.Mutex
		last    = map[string][]byte{}
		writes  int
		wg      sync.WaitGroup
		errs    = make(chan error, 16)
		writers = 4
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i = (i + writers) % 100 {
				select {
				case <-stop:
					return
				default:
				}
				name := secretName(i * 7)
				s, err := c.Client.CoreV1().Secrets(e.ns).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					errs <- err
					return
				}
				value := []byte(fmt.Sprintf("w%d-%d", w, time.Now().UnixNano()))
				s.Data["value"] = value
				if _, err := c.Client.CoreV1().Secrets(e.ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
					continue // a conflict with the controller's write: try the next
				}
				mu.Lock()
				last[name] = value
				writes++
				mu.Unlock()
			}
		}()
	}
	r := e.kmsctl(ctx, "migrate", "--engine", "storage-version-migration", "--kubeconfig", e.kubeconfig, "--resources", "secrets", "-o", "json")
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent writer: %v", err)
	}
	if r.Err != nil {
		t.Fatalf("kmsctl migrate --engine storage-version-migration under a writer: %s", r)
	}
	res := parseMigrate(t, r)
	if res.Engine != "storage-version-migration" || res.Listed < int64(e.count) {
		t.Errorf("migrate = %+v, want the storage-version-migration engine over at least %d Secrets", res, e.count)
	}
	t.Logf("migrate under a writer that made %d updates: %+v", writes, res)
	if writes == 0 {
		t.Fatal("the writer wrote nothing while the migration ran")
	}
	for name, value := range last {
		checkSecretReads(ctx, t, c, e.ns, name, value)
	}
	if v, ok := e.verify(ctx, t, "--expect-key-id", keyC); !ok {
		t.Errorf("after the migration under a writer, verify finds %d offenders", v.OffenderCount)
	}
}

// testSVMFailure makes the controller fail: an admission policy refuses
// every update of the namespace's ConfigMaps, so the migrator's writes are
// denied. kmsctl must exit non-zero, naming the migration and why, and
// leave no migration behind; verify still names the ConfigMaps it could
// not move.
func testSVMFailure(ctx context.Context, t *testing.T, e *rotationEnv) {
	c := e.c
	keyD := e.rotateKey(ctx, t)

	adm := c.Client.AdmissionregistrationV1()
	fail := admissionv1.Fail
	policy := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "freeze-configmaps"},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Update},
					Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}},
				},
			}}},
			Validations: []admissionv1.Validation{{Expression: "false", Message: "configmaps are frozen"}},
		},
	}
	if _, err := adm.ValidatingAdmissionPolicies().Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "freeze-configmaps"},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        policy.Name,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"kubernetes.io/metadata.name": e.ns},
			}},
		},
	}
	if _, err := adm.ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = adm.ValidatingAdmissionPolicyBindings().Delete(context.Background(), binding.Name, metav1.DeleteOptions{})
		_ = adm.ValidatingAdmissionPolicies().Delete(context.Background(), policy.Name, metav1.DeleteOptions{})
	}()
	// The policy takes effect once kube-apiserver has compiled it.
	err := cluster.Poll(ctx, 500*time.Millisecond, time.Minute, "the admission policy to deny ConfigMap updates", func(ctx context.Context) (bool, error) {
		cm, err := c.Client.CoreV1().ConfigMaps(e.ns).Get(ctx, "c-0000", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		_, err = c.Client.CoreV1().ConfigMaps(e.ns).Update(ctx, cm, metav1.UpdateOptions{})
		return err != nil && strings.Contains(err.Error(), "configmaps are frozen"), err
	})
	if err != nil {
		t.Fatal(err)
	}

	r := e.kmsctl(ctx, "migrate", "--engine", "storage-version-migration", "--kubeconfig", e.kubeconfig, "--resources", "configmaps")
	t.Logf("kmsctl migrate on frozen ConfigMaps:\n%s", r)
	if r.Err == nil {
		t.Fatal("kmsctl migrate exited 0 although the controller could not write the ConfigMaps")
	}
	for _, want := range []string{"StorageVersionMigration failed", "kms-plugin-configmaps", "configmaps are frozen"} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("kmsctl's error does not say %q", want)
		}
	}
	if left := svmObjectsLeft(ctx, t, c); len(left) != 0 {
		t.Errorf("StorageVersionMigrations left after a failure: %v", left)
	}
	args := append(append([]string{"verify", "-q", "--resources", "configmaps"}, c.EtcdFlags()...), "--expect-key-id", keyD, "-o", "json")
	v := parseVerify(t, e.kmsctl(ctx, args...))
	if v.OffenderCount < bulkConfigMaps {
		t.Errorf("verify names %d ConfigMaps off the new key after the failed migration, want at least %d", v.OffenderCount, bulkConfigMaps)
	}
}

// testMigrateAutoWithoutController runs on a cluster that serves the
// StorageVersionMigration API but runs no controller manager: --engine
// auto falls back to the client engine and says why, --engine
// storage-version-migration stops with the same reason, and neither leaves
// a migration behind.
func testMigrateAutoWithoutController(ctx context.Context, t *testing.T, e *rotationEnv) {
	base := []string{"migrate", "--kubeconfig", e.kubeconfig, "--resources", "secrets", "--svm-controller-timeout", "3s", "-q"}
	r := e.mustKmsctl(ctx, t, append(base, "--engine", "auto", "-o", "json")...)
	if res := parseMigrate(t, r); res.Engine != "client" || res.Listed < int64(e.count) {
		t.Errorf("auto without a controller = %+v, want the client engine over all Secrets", res)
	}
	for _, want := range []string{"kms-plugin-secrets has no status after", "no controller acts on it", "using the client engine"} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("auto's log does not say %q:\n%s", want, r.Stderr)
		}
	}
	r = e.kmsctl(ctx, append(base, "--engine", "storage-version-migration")...)
	if r.Err == nil || !strings.Contains(r.Stderr, "no controller acts on it") {
		t.Errorf("--engine storage-version-migration without a controller: %s; want a non-zero exit naming the missing controller", r)
	}
	if left := svmObjectsLeft(ctx, t, e.c); len(left) != 0 {
		t.Errorf("StorageVersionMigrations left behind: %v", left)
	}
}
