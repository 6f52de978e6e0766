package migrate

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	discoveryfake "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	clienttesting "k8s.io/client-go/testing"
)

var svmGVR = schema.GroupVersionResource{Group: svmGroup, Version: "v1", Resource: "storageversionmigrations"}

// svmAPI is a dynamic client that serves secrets and
// storageversionmigrations, and discovery that serves the SVM API or not.
func svmAPI(served bool, objs ...runtime.Object) (*dynamicfake.FakeDynamicClient, *discoveryfake.FakeDiscovery) {
	c := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		secretsGVR: "SecretList",
		svmGVR:     "StorageVersionMigrationList",
	}, objs...)
	d := &discoveryfake.FakeDiscovery{Fake: &clienttesting.Fake{}}
	if served {
		d.Resources = []*metav1.APIResourceList{{
			GroupVersion: svmGroup + "/v1",
			APIResources: []metav1.APIResource{{Name: "storageversionmigrations", Kind: "StorageVersionMigration"}},
		}}
	}
	return c, d
}

func svmObject(name, state, created string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(svmGroup + "/v1")
	u.SetKind("StorageVersionMigration")
	u.SetName(name)
	ts, _ := time.Parse(time.RFC3339, created)
	u.SetCreationTimestamp(metav1.NewTime(ts))
	if state != "" {
		setCondition(u, state, "Reason"+state, "")
	}
	return u
}

func setCondition(u *unstructured.Unstructured, typ, reason, msg string) {
	_ = unstructured.SetNestedSlice(u.Object, []any{map[string]any{
		"type": typ, "status": "True", "reason": reason, "message": msg,
	}}, "status", "conditions")
}

// controller plays kube-controller-manager: every StorageVersionMigration
// without a condition becomes Running with a status.resourceVersion, then
// ends as final (with msg as the condition's message), or stays Running
// if final is "". With needWrite, it finishes only after a Secret was
// written, as the real one waits until its cache has seen an event newer
// than status.resourceVersion. It stops with ctx.
func controller(ctx context.Context, t *testing.T, c *dynamicfake.FakeDynamicClient, final, msg string, needWrite bool) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
			l, err := c.Resource(svmGVR).List(ctx, metav1.ListOptions{})
			if err != nil {
				continue
			}
			for i := range l.Items {
				u := &l.Items[i]
				switch state, _ := svmState(u); state {
				case "":
					setCondition(u, svmRunning, "Running", "")
					_ = unstructured.SetNestedField(u.Object, "42", "status", "resourceVersion")
				case svmRunning:
					if final == "" {
						continue // stuck, as on an object that cannot be decrypted
					}
					if needWrite && !wroteSecret(c) {
						continue // its cache has not seen a newer event yet
					}
					setCondition(u, final, final, msg)
				default:
					continue
				}
				if _, err := c.Resource(svmGVR).Update(ctx, u, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil && !apierrors.IsNotFound(err) {
					t.Errorf("controller: %v", err)
				}
			}
		}
	}()
	return &wg
}

func fastSVM(log *bytes.Buffer) SVMOptions {
	return SVMOptions{Poll: 5 * time.Millisecond, NoControllerAfter: 200 * time.Millisecond, Log: log}
}

func runController(t *testing.T, c *dynamicfake.FakeDynamicClient, final, msg string) {
	startController(t, c, final, msg, false)
}

func startController(t *testing.T, c *dynamicfake.FakeDynamicClient, final, msg string, needWrite bool) {
	ctx, cancel := context.WithCancel(context.Background())
	wg := controller(ctx, t, c, final, msg, needWrite)
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func svmCount(t *testing.T, c *dynamicfake.FakeDynamicClient) int {
	t.Helper()
	l, err := c.Resource(svmGVR).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Items)
}

func createdSVMs(c *dynamicfake.FakeDynamicClient) int {
	n := 0
	for _, a := range c.Actions() {
		if a.GetVerb() == "create" && a.GetResource() == svmGVR {
			n++
		}
	}
	return n
}

func TestSVMSucceedsAndCleansUp(t *testing.T) {
	c, d := svmAPI(true, secret("a", "s1", "1"), secret("a", "s2", "1"), secret("b", "s3", "1"))
	runController(t, c, svmSucceeded, "")
	var log bytes.Buffer
	results, err := RunSVM(context.Background(), c, d, testMapper(), []string{"secrets"}, fastSVM(&log))
	if err != nil {
		t.Fatalf("RunSVM = %v", err)
	}
	if len(results) != 1 || results[0].Engine != EngineSVM || results[0].Listed != 3 || results[0].Resource != "secrets" {
		t.Errorf("results = %+v, want one svm result for 3 secrets", results)
	}
	if n := createdSVMs(c); n != 1 {
		t.Errorf("%d StorageVersionMigrations created, want 1", n)
	}
	if n := svmCount(t, c); n != 0 {
		t.Errorf("%d StorageVersionMigrations left after success, want 0", n)
	}
	var spec map[string]any
	for _, a := range c.Actions() {
		if ca, ok := a.(clienttesting.CreateAction); ok && a.GetResource() == svmGVR {
			spec, _, _ = unstructured.NestedMap(ca.GetObject().(*unstructured.Unstructured).Object, "spec", "resource")
		}
	}
	if spec["group"] != "" || spec["resource"] != "secrets" {
		t.Errorf("spec.resource = %v, want core secrets", spec)
	}
}

func TestSVMKeepLeavesTheFinishedObject(t *testing.T) {
	c, d := svmAPI(true, secret("a", "s1", "1"))
	runController(t, c, svmSucceeded, "")
	o := fastSVM(&bytes.Buffer{})
	o.Keep = true
	if _, err := RunSVM(context.Background(), c, d, testMapper(), []string{"secrets"}, o); err != nil {
		t.Fatal(err)
	}
	u, err := c.Resource(svmGVR).Get(context.Background(), SVMName("secrets"), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("kept migration: %v", err)
	}
	if state, _ := svmState(u); state != svmSucceeded {
		t.Errorf("kept migration is %q, want Succeeded", state)
	}
}

func TestSVMFailureIsReportedWithItsReason(t *testing.T) {
	c, d := svmAPI(true, secret("a", "s1", "1"))
	runController(t, c, svmFailed, "secrets a/s1: admission webhook denied the request")
	_, err := RunSVM(context.Background(), c, d, testMapper(), []string{"secrets"}, fastSVM(&bytes.Buffer{}))
	if !errors.Is(err, ErrSVMFailed) {
		t.Fatalf("RunSVM = %v, want ErrSVMFailed", err)
	}
	for _, want := range []string{"kms-plugin-secrets", "admission webhook denied the request", "migrate secrets"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestSVMWithoutControllerIsUnavailableAndCleansUp(t *testing.T) {
	c, d := svmAPI(true, secret("a", "s1", "1"))
	_, err := RunSVM(context.Background(), c, d, testMapper(), []string{"secrets"}, fastSVM(&bytes.Buffer{}))
	if !errors.Is(err, ErrSVMUnavailable) || !strings.Contains(err.Error(), "no controller") {
		t.Fatalf("RunSVM = %v, want ErrSVMUnavailable naming the missing controller", err)
	}
	if n := svmCount(t, c); n != 0 {
		t.Errorf("%d StorageVersionMigrations left behind, want 0", n)
	}
}

func TestSVMNotServed(t *testing.T) {
	c, d := svmAPI(false, secret("a", "s1", "1"))
	_, err := RunSVM(context.Background(), c, d, testMapper(), []string{"secrets"}, fastSVM(&bytes.Buffer{}))
	if !errors.Is(err, ErrSVMUnavailable) || !strings.Contains(err.Error(), "does not serve") {
		t.Fatalf("RunSVM = %v, want ErrSVMUnavailable saying the API is not served", err)
	}
	if n := createdSVMs(c); n != 0 {
		t.Errorf("%d StorageVersionMigrations created on a cluster that does not serve them", n)
	}
}

func TestSVMAdoptsARunningMigration(t *testing.T) {
	old := svmObject(SVMName("secrets"), svmRunning, time.Now().UTC().Format(time.RFC3339))
	c, d := svmAPI(true, secret("a", "s1", "1"), old)
	runController(t, c, svmSucceeded, "")
	var log bytes.Buffer
	if _, err := RunSVM(context.Background(), c, d, testMapper(), []string{"secrets"}, fastSVM(&log)); err != nil {
		t.Fatal(err)
	}
	if n := createdSVMs(c); n != 0 {
		t.Errorf("%d StorageVersionMigrations created, want 0: the running one is adopted", n)
	}
	if !strings.Contains(log.String(), "adopting") {
		t.Errorf("log %q does not say it adopted the migration", log.String())
	}
}

func TestSVMReplacesAFinishedMigration(t *testing.T) {
	// A migration that succeeded before this rotation proves nothing about
	// objects written since.
	old := svmObject(SVMName("secrets"), svmSucceeded, "2026-01-01T00:00:00Z")
	c, d := svmAPI(true, secret("a", "s1", "1"), old)
	runController(t, c, svmSucceeded, "")
	var log bytes.Buffer
	if _, err := RunSVM(context.Background(), c, d, testMapper(), []string{"secrets"}, fastSVM(&log)); err != nil {
		t.Fatal(err)
	}
	if n := createdSVMs(c); n != 1 {
		t.Errorf("%d StorageVersionMigrations created, want 1 replacing the finished one", n)
	}
	if !strings.Contains(log.String(), "replacing finished StorageVersionMigration kms-plugin-secrets from 2026-01-01T00:00:00Z") {
		t.Errorf("log %q does not say it replaced the old migration", log.String())
	}
}

func TestAutoFallsBackToTheClientEngine(t *testing.T) {
	for _, tc := range []struct {
		name   string
		served bool
		why    string
	}{
		{"not served", false, "does not serve"},
		{"no controller", true, "no controller acts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, d := svmAPI(tc.served, secret("a", "s1", "1"), secret("a", "s2", "1"))
			var log bytes.Buffer
			o := Options{Log: &log}
			results, err := RunEngine(context.Background(), Clients{Dynamic: c, Discovery: d, Mapper: testMapper()},
				EngineAuto, []string{"secrets"}, o, fastSVM(&log))
			if err != nil {
				t.Fatal(err)
			}
			if len(results) != 1 || results[0].Engine != EngineClient || results[0].Listed != 2 {
				t.Errorf("results = %+v, want the client engine's over 2 secrets", results)
			}
			if !strings.Contains(log.String(), tc.why) || !strings.Contains(log.String(), "using the client engine") {
				t.Errorf("log %q does not say why it fell back", log.String())
			}
		})
	}
}

func TestExplicitSVMEngineDoesNotFallBack(t *testing.T) {
	c, d := svmAPI(false, secret("a", "s1", "1"))
	_, err := RunEngine(context.Background(), Clients{Dynamic: c, Discovery: d, Mapper: testMapper()},
		EngineSVM, []string{"secrets"}, Options{}, fastSVM(&bytes.Buffer{}))
	if !errors.Is(err, ErrSVMUnavailable) {
		t.Fatalf("RunEngine(svm) = %v, want ErrSVMUnavailable", err)
	}
	for _, a := range c.Actions() {
		if a.GetVerb() == "update" {
			t.Fatalf("the client engine ran: %v", a)
		}
	}
	if _, err := RunEngine(context.Background(), Clients{Dynamic: c, Discovery: d, Mapper: testMapper()},
		EngineSVM, []string{"secrets"}, Options{DryRun: true}, SVMOptions{}); err == nil || !strings.Contains(err.Error(), "--dry-run") {
		t.Errorf("svm dry run = %v, want a refusal", err)
	}
	if _, err := RunEngine(context.Background(), Clients{Dynamic: c, Discovery: d, Mapper: testMapper()},
		"kubectl", []string{"secrets"}, Options{}, SVMOptions{}); err == nil || !strings.Contains(err.Error(), "unknown migrate engine") {
		t.Errorf("unknown engine = %v", err)
	}
}

func TestSVMStateReadsConditions(t *testing.T) {
	u := svmObject("x", "", "2026-01-01T00:00:00Z")
	if s, _ := svmState(u); s != "" {
		t.Errorf("no conditions: %q", s)
	}
	_ = unstructured.SetNestedSlice(u.Object, []any{
		map[string]any{"type": "Running", "status": "False"},
		map[string]any{"type": "Succeeded", "status": "False"},
		map[string]any{"type": "Failed", "status": "True", "reason": "Boom", "message": "it broke"},
	}, "status", "conditions")
	if s, why := svmState(u); s != svmFailed || why != "Boom: it broke" {
		t.Errorf("state = %q, %q; want Failed with its reason", s, why)
	}
}

func TestSVMTimeoutLeavesTheMigrationToAdopt(t *testing.T) {
	c, d := svmAPI(true, secret("a", "s1", "1"))
	runController(t, c, "", "")
	o := fastSVM(&bytes.Buffer{})
	o.Timeout = 100 * time.Millisecond
	_, err := RunSVM(context.Background(), c, d, testMapper(), []string{"secrets"}, o)
	if err == nil || !strings.Contains(err.Error(), "still running after") || !strings.Contains(err.Error(), "adopts it") {
		t.Fatalf("RunSVM = %v, want a timeout that says the migration stays", err)
	}
	if n := svmCount(t, c); n != 1 {
		t.Errorf("%d StorageVersionMigrations left, want the running one", n)
	}
}

func TestSVMWritesOneObjectBackToWakeTheController(t *testing.T) {
	c, d := svmAPI(true, secret("a", "s1", "1"), secret("a", "s2", "1"))
	startController(t, c, svmSucceeded, "", true)
	o := fastSVM(&bytes.Buffer{})
	o.Timeout = 10 * time.Second // without the write, the run would end here
	if _, err := RunSVM(context.Background(), c, d, testMapper(), []string{"secrets"}, o); err != nil {
		t.Fatal(err)
	}
	updates := 0
	for _, a := range c.Actions() {
		if a.GetVerb() == "update" && a.GetResource() == secretsGVR {
			updates++
		}
	}
	if updates != 1 {
		t.Errorf("%d Secrets written back, want exactly 1", updates)
	}
}

func wroteSecret(c *dynamicfake.FakeDynamicClient) bool {
	for _, a := range c.Actions() {
		if a.GetVerb() == "update" && a.GetResource() == secretsGVR {
			return true
		}
	}
	return false
}
