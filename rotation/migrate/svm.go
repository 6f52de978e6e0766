package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
)

// The engines that re-encrypt stored objects.
const (
	// EngineAuto uses EngineSVM when the cluster serves the API and a
	// controller acts on it, and EngineClient otherwise.
	EngineAuto = "auto"
	// EngineClient lists and writes back every object from kmsctl (Run).
	EngineClient = "client"
	// EngineSVM creates one StorageVersionMigration per resource and lets
	// kube-controller-manager rewrite the objects inside the cluster
	// (RunSVM).
	EngineSVM = "storage-version-migration"
)

// Engines lists the engine names in the order a flag's help shows them.
var Engines = []string{EngineAuto, EngineClient, EngineSVM}

var (
	// ErrSVMUnavailable is wrapped when the cluster cannot run a
	// StorageVersionMigration: the API is not served, or no controller
	// acted on one. Under EngineAuto, the client engine takes over.
	ErrSVMUnavailable = errors.New("StorageVersionMigration is not available")
	// ErrSVMFailed is wrapped when the controller reported a migration
	// Failed.
	ErrSVMFailed = errors.New("StorageVersionMigration failed")
)

const svmGroup = "storagemigration.k8s.io"

// svmVersions are the served versions kmsctl knows, preferred first.
var svmVersions = []string{"v1", "v1beta1"}

// SVMOptions shape a run of the StorageVersionMigration engine.
type SVMOptions struct {
	// NoControllerAfter is how long a migration may stay without any
	// condition before kmsctl concludes that no controller acts on it;
	// default 30 s.
	NoControllerAfter time.Duration
	// Poll is how often the migration is read; default 1 s.
	Poll time.Duration
	// Keep leaves finished migrations in place instead of deleting them.
	Keep bool
	// Timeout bounds the wait for one resource's migration once a
	// controller acts on it; 0 waits as long as ctx allows. The controller
	// retries transient errors for ever (an object that cannot be
	// decrypted keeps it Running), so an unattended run needs a bound.
	Timeout time.Duration
	// Log receives one line per notable event; nil discards.
	Log io.Writer
	// Progress receives a line whenever a migration's state changes, and
	// every 10 s while it runs; nil discards.
	Progress io.Writer
}

func (o *SVMOptions) defaults() {
	if o.NoControllerAfter <= 0 {
		o.NoControllerAfter = 30 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// SVMResource returns the storageversionmigrations resource in the newest
// version the cluster serves, or an error wrapping ErrSVMUnavailable.
func SVMResource(disc discovery.DiscoveryInterface) (schema.GroupVersionResource, error) {
	for _, v := range svmVersions {
		list, err := disc.ServerResourcesForGroupVersion(svmGroup + "/" + v)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return schema.GroupVersionResource{}, fmt.Errorf("discover %s/%s: %w", svmGroup, v, err)
		}
		for _, r := range list.APIResources {
			if r.Name == "storageversionmigrations" {
				return schema.GroupVersionResource{Group: svmGroup, Version: v, Resource: r.Name}, nil
			}
		}
	}
	return schema.GroupVersionResource{}, fmt.Errorf("%w: kube-apiserver does not serve %s (%s)", ErrSVMUnavailable, svmGroup, strings.Join(svmVersions, ", "))
}

// SVMName is the name of the StorageVersionMigration that kmsctl keeps
// for a resource ("secrets", "deployments.apps"): the same on every run,
// so that a run adopts the migration an interrupted one left running.
func SVMName(resource string) string {
	return "kms-plugin-" + strings.ToLower(resource)
}

// RunSVM re-encrypts each resource with a StorageVersionMigration and
// returns one Result per resource processed; it stops at the first
// resource that fails. Listed is the number of objects when the
// migration started; the controller does not report per-object counts,
// so Rewritten and the others stay 0 (kmsctl verify is the proof).
func RunSVM(ctx context.Context, dyn dynamic.Interface, disc discovery.DiscoveryInterface, mapper meta.RESTMapper, resources []string, opts SVMOptions) ([]Result, error) {
	opts.defaults()
	svm, err := SVMResource(disc)
	if err != nil {
		return nil, err
	}
	var results []Result
	for _, res := range resources {
		gvr, err := resolve(mapper, res)
		if err != nil {
			return results, err
		}
		r := svmRun{
			resource: res,
			target:   gvr,
			svm:      svm,
			client:   dyn.Resource(svm),
			objects:  dyn.Resource(gvr),
			opts:     opts,
		}
		result, err := r.run(ctx)
		results = append(results, result)
		if err != nil {
			return results, err
		}
	}
	return results, nil
}

type svmRun struct {
	resource string
	target   schema.GroupVersionResource
	svm      schema.GroupVersionResource
	client   dynamic.NamespaceableResourceInterface // storageversionmigrations
	objects  dynamic.NamespaceableResourceInterface // the resource migrated
	opts     SVMOptions
}

func (r *svmRun) run(ctx context.Context) (Result, error) {
	start := time.Now()
	res := Result{Resource: r.resource, Engine: EngineSVM}
	count, err := r.count(ctx)
	if err != nil {
		return res, fmt.Errorf("migrate %s: count objects: %w", r.resource, err)
	}
	res.Listed = count

	obj, err := r.createOrAdopt(ctx)
	if err != nil {
		return res, err
	}
	name := obj.GetName()
	err = r.wait(ctx, obj, count, start)
	res.Elapsed = time.Since(start)
	finished := err == nil || errors.Is(err, ErrSVMFailed)
	if errors.Is(err, ErrSVMUnavailable) || finished && !r.opts.Keep {
		// Never started, or finished: nothing left to watch. A failed
		// migration's reason is in err.
		if derr := r.delete(context.WithoutCancel(ctx), name); derr != nil {
			fmt.Fprintf(r.opts.Log, "migrate %s: could not delete StorageVersionMigration %s: %v\n", r.resource, name, derr)
		}
	}
	return res, err
}

// count is the number of objects of the resource now, from a list of one
// object and the apiserver's remainingItemCount.
func (r *svmRun) count(ctx context.Context) (int64, error) {
	l, err := r.objects.List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return 0, err
	}
	n := int64(len(l.Items))
	if rem := l.GetRemainingItemCount(); rem != nil {
		n += *rem
	}
	return n, nil
}

// createOrAdopt returns the resource's migration: one that an earlier run
// left unfinished, or a new one. A finished one (from an earlier rotation,
// or kept) says nothing about the objects written since, so it is
// replaced.
func (r *svmRun) createOrAdopt(ctx context.Context) (*unstructured.Unstructured, error) {
	name := SVMName(r.resource)
	old, err := r.client.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("migrate %s: read StorageVersionMigration %s: %w", r.resource, name, err)
	default:
		if state, _ := svmState(old); state == "" || state == svmRunning {
			fmt.Fprintf(r.opts.Log, "migrate %s: adopting StorageVersionMigration %s, created %s\n", r.resource, name, old.GetCreationTimestamp().UTC().Format(time.RFC3339))
			return old, nil
		}
		fmt.Fprintf(r.opts.Log, "migrate %s: replacing finished StorageVersionMigration %s from %s\n", r.resource, name, old.GetCreationTimestamp().UTC().Format(time.RFC3339))
		if err := r.delete(ctx, name); err != nil {
			return nil, err
		}
	}
	obj := &unstructured.Unstructured{}
	obj.SetAPIVersion(r.svm.GroupVersion().String())
	obj.SetKind("StorageVersionMigration")
	obj.SetName(name)
	obj.SetLabels(map[string]string{"app.kubernetes.io/managed-by": "kmsctl"})
	if err := unstructured.SetNestedStringMap(obj.Object, map[string]string{
		"group": r.target.Group, "resource": r.target.Resource,
	}, "spec", "resource"); err != nil {
		return nil, err
	}
	created, err := r.client.Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("migrate %s: create StorageVersionMigration %s: %w", r.resource, name, err)
	}
	return created, nil
}

// delete removes the migration and waits until it is gone, so that a new
// one of the same name can be created.
func (r *svmRun) delete(ctx context.Context, name string) error {
	err := r.client.Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete StorageVersionMigration %s: %w", name, err)
	}
	for {
		_, err := r.client.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err := Sleep(ctx, r.opts.Poll); err != nil {
			return fmt.Errorf("delete StorageVersionMigration %s: %w", name, err)
		}
	}
}

const (
	svmRunning   = "Running"
	svmSucceeded = "Succeeded"
	svmFailed    = "Failed"
)

// wait polls the migration until it succeeds or fails, or until it has
// stayed without any condition for NoControllerAfter.
func (r *svmRun) wait(ctx context.Context, obj *unstructured.Unstructured, count int64, start time.Time) error {
	name := obj.GetName()
	created := obj.GetCreationTimestamp().Time
	if created.IsZero() {
		created = start
	}
	last, lastAt, nudged := "", time.Time{}, false
	for {
		state, why := svmState(obj)
		if state+why != last || time.Since(lastAt) >= 10*time.Second {
			shown := state
			switch {
			case shown == "":
				shown = "waiting for the controller"
			case state == svmRunning && strings.Contains(why, "error"):
				// The controller retries transient errors and says so
				// only here.
				shown += " (" + why + ")"
			}
			fmt.Fprintf(r.opts.Progress, "migrate %s: StorageVersionMigration %s: %s, %s, %d objects\n",
				r.resource, name, shown, time.Since(start).Round(time.Second), count)
			last, lastAt = state+why, time.Now()
		}
		switch state {
		case svmSucceeded:
			return nil
		case svmFailed:
			return fmt.Errorf("migrate %s: %w: %s: %s", r.resource, ErrSVMFailed, name, why)
		case svmRunning:
			if r.opts.Timeout > 0 && time.Since(start) >= r.opts.Timeout {
				return fmt.Errorf("migrate %s: StorageVersionMigration %s still running after %s (%s); it is left running, and the next run adopts it",
					r.resource, name, r.opts.Timeout, orNone(why))
			}
			if !nudged && svmResourceVersion(obj) != "" {
				nudged = true
				r.nudge(ctx)
			}
		case "":
			if waited := time.Since(created); waited >= r.opts.NoControllerAfter {
				return fmt.Errorf("migrate %s: %w: %s has no status after %s: no controller acts on it (kube-controller-manager must run storage-version-migrator-controller and garbage-collector-controller; see docs/rotation.md)",
					r.resource, ErrSVMUnavailable, name, waited.Round(time.Second))
			}
		}
		if err := Sleep(ctx, r.opts.Poll); err != nil {
			return fmt.Errorf("migrate %s: waiting for StorageVersionMigration %s: %w", r.resource, name, err)
		}
		next, err := r.client.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("migrate %s: StorageVersionMigration %s was deleted while it ran", r.resource, name)
		}
		if err != nil {
			return fmt.Errorf("migrate %s: read StorageVersionMigration %s: %w", r.resource, name, err)
		}
		obj = next
	}
}

// nudge writes one object of the resource back unchanged. The controller
// starts rewriting only once its cache of the resource has seen an event at
// least as new as the migration's status.resourceVersion; on a cluster
// where nothing writes that resource, that event is a watch bookmark, up
// to a minute or more later. After a rotation the object is stale, so the
// write stores it again and is that event. Errors are harmless: the
// controller then waits for the bookmark.
func (r *svmRun) nudge(ctx context.Context) {
	l, err := r.objects.List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil || len(l.Items) == 0 {
		return
	}
	obj := &l.Items[0]
	var werr error
	if obj.GetNamespace() != "" {
		_, werr = r.objects.Namespace(obj.GetNamespace()).Update(ctx, obj, metav1.UpdateOptions{})
	} else {
		_, werr = r.objects.Update(ctx, obj, metav1.UpdateOptions{})
	}
	if werr != nil {
		fmt.Fprintf(r.opts.Log, "migrate %s: could not write %s back to wake the controller (it will wait for a watch bookmark): %v\n", r.resource, obj.GetName(), werr)
	}
}

func svmResourceVersion(obj *unstructured.Unstructured) string {
	rv, _, _ := unstructured.NestedString(obj.Object, "status", "resourceVersion")
	return rv
}

func orNone(why string) string {
	if why == "" {
		return "no message"
	}
	return why
}

// svmState is the migration's state: Succeeded or Failed once either
// condition is true, else Running if that one is, else "" (no controller
// has acted yet). why is the deciding condition's reason and message.
func svmState(obj *unstructured.Unstructured) (state, why string) {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	trueConds := map[string]string{}
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok {
			continue
		}
		typ, _ := m["type"].(string)
		status, _ := m["status"].(string)
		if status != string(metav1.ConditionTrue) {
			continue
		}
		reason, _ := m["reason"].(string)
		msg, _ := m["message"].(string)
		trueConds[typ] = strings.TrimSpace(reason + ": " + msg)
	}
	for _, s := range []string{svmFailed, svmSucceeded, svmRunning} {
		if why, ok := trueConds[s]; ok {
			return s, why
		}
	}
	return "", ""
}

// Sleep waits d, or less if ctx ends first, and then returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
