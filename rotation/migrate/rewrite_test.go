package migrate

import (
	"context"
	"errors"
	"sync"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	clienttesting "k8s.io/client-go/testing"
)

var secretsGVR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

func secret(ns, name, rv string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("v1")
	u.SetKind("Secret")
	u.SetNamespace(ns)
	u.SetName(name)
	u.SetResourceVersion(rv)
	return u
}

func testMapper() meta.RESTMapper {
	m := meta.NewDefaultRESTMapper(nil)
	m.Add(schema.GroupVersionKind{Version: "v1", Kind: "Secret"}, meta.RESTScopeNamespace)
	return m
}

// fakeAPI is a dynamic client whose updates behave like kube-apiserver's:
// "stale-*" objects get a new resourceVersion, others keep theirs;
// "conflict-*" objects conflict once, "gone-*" are deleted, "denied-*"
// are refused.
func fakeAPI(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	c := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{secretsGVR: "SecretList"}, objs...)
	var mu sync.Mutex
	conflicted := map[string]bool{}
	c.PrependReactor("update", "secrets", func(a clienttesting.Action) (bool, runtime.Object, error) {
		u := a.(clienttesting.UpdateAction).GetObject().(*unstructured.Unstructured).DeepCopy()
		name := u.GetName()
		mu.Lock()
		defer mu.Unlock()
		switch {
		case len(name) > 9 && name[:9] == "conflict-" && !conflicted[name]:
			conflicted[name] = true
			return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "secrets"}, name, errors.New("changed"))
		case len(name) > 5 && name[:5] == "gone-":
			return true, nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
		case len(name) > 7 && name[:7] == "denied-":
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, name, errors.New("webhook says no"))
		case len(name) > 6 && name[:6] == "stale-", len(name) > 9 && name[:9] == "conflict-":
			u.SetResourceVersion(u.GetResourceVersion() + "0")
		}
		return true, u, nil
	})
	return c
}

func TestRunCounts(t *testing.T) {
	c := fakeAPI(
		secret("a", "stale-1", "1"), secret("a", "stale-2", "2"), secret("b", "current-1", "3"),
		secret("b", "conflict-1", "4"), secret("c", "gone-1", "5"),
	)
	dir := t.TempDir()
	res, err := Run(context.Background(), c, testMapper(), []string{"secrets"}, Options{Concurrency: 3, CheckpointDir: dir})
	if err != nil {
		t.Fatalf("Run() = %v", err)
	}
	want := Result{Resource: "secrets", Engine: EngineClient, Listed: 5, Rewritten: 3, Unchanged: 1, Deleted: 1, Conflicts: 1}
	got := res[0]
	got.Elapsed = 0
	if got != want {
		t.Errorf("Run() = %+v, want %+v", got, want)
	}
	cp, err := LoadCheckpoint(dir, "secrets")
	if err != nil || !cp.Done || cp.Objects != 5 || cp.Pages != 1 {
		t.Errorf("checkpoint after Run = %+v, %v; want done after 1 page of 5 objects", cp, err)
	}

	// A second run sees the checkpoint and does nothing; --restart runs again.
	c.ClearActions()
	res, err = Run(context.Background(), c, testMapper(), []string{"secrets"}, Options{CheckpointDir: dir})
	if err != nil || !res[0].AlreadyDone || len(c.Actions()) != 0 {
		t.Errorf("Run() after done = %+v, %v with %d API calls; want already done and no calls", res, err, len(c.Actions()))
	}
	res, err = Run(context.Background(), c, testMapper(), []string{"secrets"}, Options{CheckpointDir: dir, Restart: true})
	if err != nil || res[0].AlreadyDone || res[0].Listed != 5 {
		t.Errorf("Run(Restart) = %+v, %v; want a full run", res, err)
	}
}

func TestRunFailureKeepsCheckpoint(t *testing.T) {
	c := fakeAPI(secret("a", "stale-1", "1"), secret("a", "denied-1", "2"))
	dir := t.TempDir()
	res, err := Run(context.Background(), c, testMapper(), []string{"secrets"}, Options{CheckpointDir: dir})
	if !errors.Is(err, ErrFailed) {
		t.Fatalf("Run() = %v, want ErrFailed", err)
	}
	if res[0].Failed != 1 || res[0].Rewritten != 1 {
		t.Errorf("Run() = %+v, want 1 failed and 1 rewritten", res[0])
	}
	cp, err := LoadCheckpoint(dir, "secrets")
	if err != nil || cp.Done || cp.Pages != 0 {
		t.Errorf("checkpoint after a failed page = %+v, %v; want no page recorded", cp, err)
	}
}

func TestRunDryRunWritesNothing(t *testing.T) {
	c := fakeAPI(secret("a", "stale-1", "1"), secret("a", "stale-2", "2"))
	dir := t.TempDir()
	res, err := Run(context.Background(), c, testMapper(), []string{"secrets"}, Options{DryRun: true, CheckpointDir: dir})
	if err != nil || res[0].Listed != 2 || res[0].Rewritten != 0 {
		t.Fatalf("Run(DryRun) = %+v, %v; want 2 listed, none written", res, err)
	}
	for _, a := range c.Actions() {
		if a.GetVerb() != "list" {
			t.Errorf("dry run made a %s call", a.GetVerb())
		}
	}
	if cp, _ := LoadCheckpoint(dir, "secrets"); cp.Pages != 0 {
		t.Errorf("dry run wrote checkpoint %+v", cp)
	}
}

func TestCheckpointRoundTrip(t *testing.T) {
	dir := t.TempDir()
	cp := Checkpoint{Resource: "deployments.apps", Continue: "token", Pages: 3, Objects: 1500}
	if err := cp.Save(dir); err != nil {
		t.Fatal(err)
	}
	got, err := LoadCheckpoint(dir, "deployments.apps")
	if err != nil || got.Continue != "token" || got.Pages != 3 || got.Objects != 1500 {
		t.Errorf("LoadCheckpoint() = %+v, %v; want what was saved", got, err)
	}
	if _, err := LoadCheckpoint(dir, "secrets"); err != nil {
		t.Errorf("LoadCheckpoint(missing) = %v, want a fresh checkpoint", err)
	}
}
