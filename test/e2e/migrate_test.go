//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/test/cluster"
)

// migrateResult is one entry of kmsctl migrate -o json.
type migrateResult struct {
	Resource  string `json:"resource"`
	Engine    string `json:"engine"`
	Listed    int64  `json:"listed"`
	Rewritten int64  `json:"rewritten"`
	Unchanged int64  `json:"unchanged"`
	Deleted   int64  `json:"deleted"`
	Conflicts int64  `json:"conflicts"`
	Failed    int64  `json:"failed"`
	Resumed   bool   `json:"resumed"`
	ElapsedNS int64  `json:"elapsed_ns"`
}

func parseMigrate(t *testing.T, r kmsctlResult) migrateResult {
	t.Helper()
	var res []migrateResult
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil || len(res) != 1 {
		t.Fatalf("parse kmsctl migrate -o json: %v\n%s", err, r)
	}
	return res[0]
}

func (e *rotationEnv) migrateArgs(extra ...string) []string {
	// The client engine, named: this cluster runs no controller manager,
	// so auto would first wait for a StorageVersionMigration controller.
	return append([]string{"migrate", "--engine", "client", "--kubeconfig", e.kubeconfig, "--resources", "secrets"}, extra...)
}

// testMigrateResume: a migrate killed after two checkpointed pages leaves
// part of the Secrets under the old key; a second run resumes from the
// checkpoint (it lists fewer objects than exist) and finishes the job.
func testMigrateResume(ctx context.Context, t *testing.T, e *rotationEnv) {
	keyB := e.keys[1]
	dir := t.TempDir()
	argv := append(e.c.Kmsctl(), e.migrateArgs("--checkpoint-dir", dir, "--page-size", "100", "--qps", "100", "-q")...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cpFile := filepath.Join(dir, "secrets.checkpoint.json")
	var pages int64
	err := cluster.Poll(ctx, 50*time.Millisecond, 2*time.Minute, "migrate checkpoints two pages", func(context.Context) (bool, error) {
		b, err := os.ReadFile(cpFile)
		if err != nil {
			return false, err
		}
		var cp struct {
			Pages int64 `json:"pages"`
		}
		if err := json.Unmarshal(b, &cp); err != nil {
			return false, err
		}
		pages = cp.Pages
		return pages >= 2, nil
	})
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}

	v, ok := e.verify(ctx, t, "--expect-key-id", keyB)
	if ok || v.OffenderCount == 0 || v.OffenderCount >= int64(e.count) {
		t.Fatalf("after killing migrate at page %d: verify exit 0 = %v with %d offenders; want some but not all %d Secrets left under the old key",
			pages, ok, v.OffenderCount, e.count)
	}
	t.Logf("migrate killed after %d checkpointed pages; %d objects still to re-encrypt", pages, v.OffenderCount)

	r := e.mustKmsctl(ctx, t, e.migrateArgs("--checkpoint-dir", dir, "--page-size", "100", "-o", "json")...)
	res := parseMigrate(t, r)
	if !res.Resumed || res.Failed != 0 || res.Listed >= v.Total {
		t.Errorf("resumed migrate = %+v; want resumed, no failures, fewer than the %d objects listed", res, v.Total)
	}
	if !strings.Contains(r.Stderr, "resuming after") {
		t.Errorf("resumed migrate does not say it resumes:\n%s", r)
	}
	if v, ok := e.verify(ctx, t, "--expect-key-id", keyB); !ok {
		t.Fatalf("after the resumed migrate, verify --expect-key-id %s finds %d offenders", keyB, v.OffenderCount)
	}

	// Done means done: a third run does nothing until --restart.
	r = e.mustKmsctl(ctx, t, e.migrateArgs("--checkpoint-dir", dir, "-o", "json")...)
	if !strings.Contains(r.Stderr, "already done") {
		t.Errorf("migrate after completion does not say it is done:\n%s", r)
	}
}

// testMigrateConcurrent: while migrate writes the Secrets back, another
// client updates some of those it already listed (so its writes conflict)
// and deletes others (so they are gone). migrate retries the conflicts on a
// fresh read, keeps the other writer's data, skips and counts the deleted,
// and fails nothing.
func testMigrateConcurrent(ctx context.Context, t *testing.T, e *rotationEnv) {
	c := e.c
	argv := append(c.Kmsctl(), e.migrateArgs("--page-size", "2000", "--concurrency", "4", "--qps", "200", "-v", "-q", "-o", "json")...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var stderrText bytes.Buffer
	listed := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			stderrText.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "listed page 1") {
				once.Do(func() { close(listed) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	select {
	case <-listed:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		t.Fatal("migrate did not list its first page within a minute")
	}

	// migrate writes about 200 objects/s in key order; act on the tail of
	// the list, which it reaches seconds from now.
	updated := map[string][]byte{}
	var deleted []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := e.count - 200 + w; i < e.count; i += 8 {
				name := secretName(i)
				if i >= e.count-50 {
					if err := c.Client.CoreV1().Secrets(e.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
						errs <- err
					}
					mu.Lock()
					deleted = append(deleted, name)
					mu.Unlock()
					continue
				}
				s, err := c.Client.CoreV1().Secrets(e.ns).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					errs <- err
					continue
				}
				value := []byte(fmt.Sprintf("updated-%d", time.Now().UnixNano()))
				s.Data["value"] = value
				if _, err := c.Client.CoreV1().Secrets(e.ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				updated[name] = value
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent writer: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("kmsctl migrate under a concurrent writer: %v\n%s\n%s", err, stdout.String(), stderrText.String())
	}
	res := parseMigrate(t, kmsctlResult{Stdout: stdout.String()})
	t.Logf("migrate under a concurrent writer: %+v", res)
	if res.Failed != 0 || res.Conflicts == 0 || res.Deleted == 0 {
		t.Errorf("migrate = %+v; want conflicts retried, deletions counted, no failures", res)
	}
	for name, value := range updated {
		checkSecretReads(ctx, t, c, e.ns, name, value)
	}
	e.count -= len(deleted)
	// Keep the names dense for later subtests: recreate the deleted ones.
	for _, name := range deleted {
		createSecret(ctx, t, c, e.ns, name, []byte("v-"+name))
	}
	e.count += len(deleted)
	if v, ok := e.verify(ctx, t, "--expect-key-id", e.keys[1]); !ok {
		t.Errorf("after migrate under a concurrent writer, verify finds %d offenders", v.OffenderCount)
	}
}

// testMigrateThroughput measures kmsctl migrate against the kubectl
// pipeline the Kubernetes docs suggest, each re-encrypting every Secret
// after a fresh rotation. It reports numbers and asserts nothing about
// time; it runs only with KMS_E2E_MEASURE=1, as it costs two more
// rotations.
func testMigrateThroughput(ctx context.Context, t *testing.T, e *rotationEnv) {
	if os.Getenv("KMS_E2E_MEASURE") == "" {
		t.Skip("set KMS_E2E_MEASURE=1 to measure kmsctl migrate against kubectl replace")
	}
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed")
	}
	c := e.c
	rotate := func() string {
		key, err := c.Rotate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		waitWritesUnder(ctx, t, c, e.ns, key)
		return key
	}
	key := rotate()
	start := time.Now()
	pipe := exec.CommandContext(ctx, "sh", "-c", kubectl+" get secrets -A -o json | "+kubectl+" replace -f - >/dev/null")
	pipe.Env = append(os.Environ(), "KUBECONFIG="+e.kubeconfig)
	if out, err := pipe.CombinedOutput(); err != nil {
		t.Fatalf("kubectl replace: %v\n%s", err, out)
	}
	kubectlTime := time.Since(start)
	v, ok := e.verify(ctx, t, "--expect-key-id", key)
	if !ok {
		t.Fatalf("after kubectl replace, %d offenders", v.OffenderCount)
	}
	t.Logf("kubectl get | replace: %d objects in %s: %.0f objects/s", v.Total, kubectlTime.Round(time.Millisecond), float64(v.Total)/kubectlTime.Seconds())

	key = rotate()
	start = time.Now()
	r := e.mustKmsctl(ctx, t, e.migrateArgs("-q", "-o", "json")...)
	kmsctlTime := time.Since(start)
	res := parseMigrate(t, r)
	v, ok = e.verify(ctx, t, "--expect-key-id", key)
	if !ok {
		t.Fatalf("after kmsctl migrate, %d offenders", v.OffenderCount)
	}
	t.Logf("kmsctl migrate (default --concurrency 16): %d objects in %s (process), %s (rewrite): %.0f objects/s",
		res.Listed, kmsctlTime.Round(time.Millisecond), time.Duration(res.ElapsedNS).Round(time.Millisecond), float64(res.Listed)/kmsctlTime.Seconds())
}
