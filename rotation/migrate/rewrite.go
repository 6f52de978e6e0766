package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/kms-plugin/kms-plugin/rotation/progress"
)

// Options shape a rewrite.
type Options struct {
	// Concurrency is how many writes are in flight; default 16.
	Concurrency int
	// QPS bounds requests per second (lists, reads and writes); 0 means
	// no limit.
	QPS float64
	// PageSize is how many objects one list call returns; default 500.
	PageSize int64
	// CheckpointDir keeps one checkpoint file per resource; empty keeps
	// none, and an interrupted run starts over.
	CheckpointDir string
	// Restart ignores existing checkpoints.
	Restart bool
	// DryRun lists and counts, and writes nothing.
	DryRun bool
	// MaxRetries bounds retries of one object after conflicts or
	// transient errors; default 10.
	MaxRetries int
	// Verbose logs every page listed.
	Verbose bool
	// Log receives one line per notable event (resume, failure); nil
	// discards.
	Log io.Writer
	// Progress receives the progress meter; nil discards.
	Progress io.Writer
}

// Result counts what a rewrite of one resource did.
type Result struct {
	Resource string `json:"resource"`
	// Engine is the engine that migrated the resource (EngineClient or
	// EngineSVM).
	Engine string `json:"engine"`
	// Listed counts objects seen in this run.
	Listed int64 `json:"listed"`
	// Rewritten counts objects the apiserver stored again (their
	// resourceVersion changed): they were under a stale key or plaintext.
	Rewritten int64 `json:"rewritten"`
	// Unchanged counts objects the apiserver had no reason to store again:
	// already under its current key.
	Unchanged int64 `json:"unchanged"`
	// Deleted counts objects gone before they could be written.
	Deleted int64 `json:"deleted"`
	// Conflicts counts writes that lost a race with another writer and
	// were retried on a fresh read.
	Conflicts int64 `json:"conflicts"`
	// Failed counts objects that could not be written; the run stops at
	// the end of their page without moving the checkpoint past it.
	Failed int64 `json:"failed"`
	// Resumed says the run continued from a checkpoint.
	Resumed bool `json:"resumed,omitempty"`
	// AlreadyDone says a checkpoint showed the resource finished.
	AlreadyDone bool          `json:"already_done,omitempty"`
	Elapsed     time.Duration `json:"elapsed_ns"`
}

// Rate is objects per second over the run.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Listed) / r.Elapsed.Seconds()
}

// ErrFailed is wrapped by Run's error when some objects could not be
// written.
var ErrFailed = errors.New("objects could not be rewritten")

// Run rewrites every object of each resource (named as in an
// EncryptionConfiguration: "secrets", "deployments.apps") and returns one
// Result per resource processed. It stops at the first resource that
// fails.
func Run(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, resources []string, opts Options) ([]Result, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 16
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 500
	}
	if opts.MaxRetries <= 0 {
		opts.MaxRetries = 10
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	limit := rate.Inf
	burst := 1
	if opts.QPS > 0 {
		limit, burst = rate.Limit(opts.QPS), max(1, int(opts.QPS/10))
	}
	limiter := rate.NewLimiter(limit, burst)

	var results []Result
	for _, res := range resources {
		gvr, err := resolve(mapper, res)
		if err != nil {
			return results, err
		}
		r := &resourceRun{
			name:    res,
			client:  dyn.Resource(gvr),
			opts:    opts,
			limiter: limiter,
		}
		result, err := r.run(ctx)
		results = append(results, result)
		if err != nil {
			return results, err
		}
	}
	return results, nil
}

// resolve maps "secrets" or "deployments.apps" to the served version.
func resolve(mapper meta.RESTMapper, resource string) (schema.GroupVersionResource, error) {
	gr := schema.ParseGroupResource(resource)
	gvr, err := mapper.ResourceFor(gr.WithVersion(""))
	if err != nil {
		return schema.GroupVersionResource{}, fmt.Errorf("resource %q: %w", resource, err)
	}
	return gvr, nil
}

type resourceRun struct {
	name    string
	client  dynamic.NamespaceableResourceInterface
	opts    Options
	limiter *rate.Limiter
	pages   int64 // listed in this run

	listed, rewritten, unchanged, deleted, conflicts, failed atomic.Int64
}

// page is one list page on its way through the workers.
type page struct {
	items []unstructured.Unstructured
	next  string // continue token after this page
	wg    sync.WaitGroup
	bad   atomic.Int64 // objects of this page that failed
}

func (r *resourceRun) result(start time.Time) Result {
	return Result{
		Resource: r.name, Engine: EngineClient, Listed: r.listed.Load(), Rewritten: r.rewritten.Load(),
		Unchanged: r.unchanged.Load(), Deleted: r.deleted.Load(), Conflicts: r.conflicts.Load(),
		Failed: r.failed.Load(), Elapsed: time.Since(start),
	}
}

// run migrates one resource in three parts that run at once: list pages
// from the checkpoint on, rewrite each page's objects on the workers, and
// checkpoint the pages in order as they complete.
func (r *resourceRun) run(ctx context.Context) (Result, error) {
	start := time.Now()
	cp, done, err := r.resume()
	if err != nil || done {
		return Result{Resource: r.name, Engine: EngineClient, AlreadyDone: done}, err
	}
	resumed := cp.Continue != ""

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	what := "migrate " + r.name
	if r.opts.DryRun {
		what = "migrate --dry-run " + r.name
	}
	meter := progress.New(r.opts.Progress, what)
	defer meter.Done()

	jobs := make(chan job)
	workers := r.startWorkers(ctx, jobs, meter)
	pages := make(chan *page, 2)
	cpDone, cpErr := r.checkpointPages(pages, &cp, cancel)

	listErr := r.list(ctx, cp.Continue, meter, func(p *page) {
		p.wg.Add(len(p.items))
		pages <- p
		for i := range p.items {
			jobs <- job{obj: &p.items[i], page: p}
		}
	})
	close(jobs)
	workers.Wait()
	close(pages)
	<-cpDone

	res := r.result(start)
	res.Resumed = resumed
	switch {
	case res.Failed > 0:
		return res, fmt.Errorf("migrate %s: %d %w; the checkpoint stays before their page, run again to retry", r.name, res.Failed, ErrFailed)
	case *cpErr != nil:
		return res, fmt.Errorf("migrate %s: %w", r.name, *cpErr)
	case listErr != nil:
		return res, fmt.Errorf("migrate %s: %w", r.name, listErr)
	}
	return res, nil
}

// resume loads the resource's checkpoint (unless told to start over) and
// reports whether an earlier run already finished it.
func (r *resourceRun) resume() (cp Checkpoint, done bool, err error) {
	cp = Checkpoint{Resource: r.name}
	if r.opts.CheckpointDir != "" && !r.opts.Restart && !r.opts.DryRun {
		if cp, err = LoadCheckpoint(r.opts.CheckpointDir, r.name); err != nil {
			return cp, false, err
		}
	}
	switch {
	case cp.Done:
		fmt.Fprintf(r.opts.Log, "migrate %s: already done (%d objects, checkpoint of %s); --restart to run it again\n",
			r.name, cp.Objects, cp.UpdatedAt.Format(time.RFC3339))
		return cp, true, nil
	case cp.Continue != "":
		fmt.Fprintf(r.opts.Log, "migrate %s: resuming after %d pages, %d objects (checkpoint of %s)\n",
			r.name, cp.Pages, cp.Objects, cp.UpdatedAt.Format(time.RFC3339))
	}
	if cp.StartedAt.IsZero() {
		cp.StartedAt = time.Now().UTC()
	}
	return cp, false, nil
}

// startWorkers starts opts.Concurrency workers that rewrite the objects
// from jobs; after ctx ends they mark what is left of a page as not done.
func (r *resourceRun) startWorkers(ctx context.Context, jobs <-chan job, meter *progress.Meter) *sync.WaitGroup {
	var workers sync.WaitGroup
	for range r.opts.Concurrency {
		workers.Go(func() {
			for j := range jobs {
				if ctx.Err() != nil {
					j.page.bad.Add(1) // interrupted: the page is not done
				} else {
					r.rewrite(ctx, j.obj, j.page)
				}
				j.page.wg.Done()
				meter.Add(1)
			}
		})
	}
	return &workers
}

// checkpointPages saves cp after each page from pages, in order, once all
// its objects are written, while the workers already write the next page.
// A page with a failed object stops the listing (cancel) and leaves the
// checkpoint before it. The returned channel closes when pages is drained;
// the error is then the checkpoint's save error, if any.
func (r *resourceRun) checkpointPages(pages <-chan *page, cp *Checkpoint, cancel context.CancelFunc) (<-chan struct{}, *error) {
	done := make(chan struct{})
	cpErr := new(error)
	go func() {
		defer close(done)
		for p := range pages {
			p.wg.Wait()
			if p.bad.Load() > 0 {
				cancel()
				for range pages {
				}
				return
			}
			cp.Pages++
			cp.Objects += int64(len(p.items))
			cp.Continue, cp.Done = p.next, p.next == ""
			if r.opts.CheckpointDir != "" && !r.opts.DryRun && *cpErr == nil {
				if err := cp.Save(r.opts.CheckpointDir); err != nil {
					*cpErr = err
					cancel()
				}
			}
		}
	}()
	return done, cpErr
}

type job struct {
	obj  *unstructured.Unstructured
	page *page
}

// list fetches pages from token on and hands each to emit.
func (r *resourceRun) list(ctx context.Context, token string, meter *progress.Meter, emit func(*page)) error {
	first := true
	for {
		if err := r.limiter.Wait(ctx); err != nil {
			return err
		}
		l, err := r.client.List(ctx, metav1.ListOptions{Limit: r.opts.PageSize, Continue: token})
		if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			// The token outlived etcd's compaction. The apiserver offers a
			// token that continues from the same key at the latest
			// revision; without one, start over (rewrites are idempotent).
			var st apierrors.APIStatus
			newToken := ""
			if errors.As(err, &st) {
				newToken = st.Status().ListMeta.Continue
			}
			fmt.Fprintf(r.opts.Log, "migrate %s: continue token expired; continuing %s\n", r.name,
				map[bool]string{true: "from the same key at the latest revision", false: "from the beginning"}[newToken != ""])
			token = newToken
			continue
		}
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		if first {
			first = false
			if rem := l.GetRemainingItemCount(); rem != nil {
				meter.SetTotal(int64(len(l.Items)) + *rem)
			}
		}
		r.listed.Add(int64(len(l.Items)))
		r.pages++
		if r.opts.Verbose {
			fmt.Fprintf(r.opts.Log, "migrate %s: listed page %d: %d objects\n", r.name, r.pages, len(l.Items))
		}
		p := &page{items: l.Items, next: l.GetContinue()}
		if r.opts.DryRun {
			meter.Add(int64(len(p.items)))
			p.items = nil
		}
		emit(p)
		if p.next == "" {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		token = p.next
	}
}

// rewrite writes obj back unchanged, re-reading it after a conflict.
func (r *resourceRun) rewrite(ctx context.Context, obj *unstructured.Unstructured, p *page) {
	ns := r.client.Namespace(obj.GetNamespace())
	id := obj.GetName()
	if obj.GetNamespace() != "" {
		id = obj.GetNamespace() + "/" + id
	}
	fail := func(err error) {
		p.bad.Add(1)
		if ctx.Err() != nil {
			return // interrupted, not failed: the page is simply not done
		}
		r.failed.Add(1)
		fmt.Fprintf(r.opts.Log, "migrate %s %s: %v\n", r.name, id, err)
	}
	for attempt := 0; ; attempt++ {
		if attempt > r.opts.MaxRetries {
			fail(fmt.Errorf("gave up after %d attempts", attempt))
			return
		}
		if err := r.limiter.Wait(ctx); err != nil {
			fail(err)
			return
		}
		out, err := ns.Update(ctx, obj, metav1.UpdateOptions{})
		switch {
		case err == nil:
			if out.GetResourceVersion() != obj.GetResourceVersion() {
				r.rewritten.Add(1)
			} else {
				r.unchanged.Add(1)
			}
			return
		case apierrors.IsNotFound(err):
			r.deleted.Add(1)
			return
		case apierrors.IsConflict(err):
			r.conflicts.Add(1)
			if err := r.limiter.Wait(ctx); err != nil {
				fail(err)
				return
			}
			fresh, err := ns.Get(ctx, obj.GetName(), metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				r.deleted.Add(1)
				return
			case err != nil && transient(err):
				sleep(ctx, attempt)
				continue
			case err != nil:
				fail(fmt.Errorf("re-read after a conflict: %w", err))
				return
			}
			obj = fresh
		case transient(err):
			sleep(ctx, attempt)
		default:
			fail(err)
			return
		}
	}
}

// transient reports errors worth retrying: throttling, timeouts, an
// apiserver or etcd that is briefly unavailable.
func transient(err error) bool {
	var ne net.Error
	return apierrors.IsTooManyRequests(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
		apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) || apierrors.IsUnexpectedServerError(err) ||
		errors.As(err, &ne)
}

// sleep backs off before retry attempt+1: 100 ms doubling up to 5 s.
func sleep(ctx context.Context, attempt int) {
	_ = Sleep(ctx, min(100*time.Millisecond<<min(attempt, 6), 5*time.Second))
}
