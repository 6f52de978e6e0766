package rotation

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/rotation/migrate"
	"github.com/kms-plugin/kms-plugin/rotation/verify"
)

// PluginStatus asks the KMS v2 plugin at endpoint for its Status.
type PluginStatus func(ctx context.Context, endpoint string) (keyID string, healthy bool, err error)

// PluginLoaded asks the kms-plugin at endpoint, through its admin API, what
// it has loaded.
type PluginLoaded func(ctx context.Context, endpoint string) (Loaded, error)

// Loaded is what a plugin reports it holds in memory.
type Loaded struct {
	Versions []providers.KeyInfo
	// ReloadInterval is how often the plugin looks for new keys; 0: never.
	ReloadInterval time.Duration
	// LastReloadError is why its last reload was refused, if it was.
	LastReloadError string
}

// keyLister is a Backend that can list its versions with check values
// (LocalBackend), so that promote can compare them with the plugins'.
type keyLister interface {
	Keys(ctx context.Context) ([]providers.KeyInfo, error)
}

// Procedure is one rotation: its backend, who to wait for, how to
// migrate and verify, and where to keep its state.
type Procedure struct {
	Backend Backend
	// Endpoints are every plugin that must report the new key_id.
	Endpoints    []string
	PluginStatus PluginStatus
	// PluginLoaded is the admin API call behind promote's gate: for a
	// two-phase backend, promote waits until every plugin reports it has
	// loaded the new version, with the same key, and refuses a plugin
	// whose keys differ from the backend's.
	PluginLoaded PluginLoaded
	// Canaries, one per kube-apiserver, prove it encrypts with the new key.
	Canaries []*Canary
	// Resources are what Migrate and Verify cover; recorded in the state.
	Resources []string
	// Migrate re-encrypts Resources, checkpointing in checkpointDir.
	Migrate func(ctx context.Context, checkpointDir string) ([]migrate.Result, error)
	// MigrateEngine names the engine Migrate uses (migrate.EngineAuto,
	// ...), for the plan; empty means the client engine.
	MigrateEngine string
	// Verify scans Resources in etcd against expect.
	Verify func(ctx context.Context, expect verify.Expect) (verify.Report, error)

	// StateDir keeps state.json and the migrate checkpoints.
	StateDir string
	// Retire retires the old versions once verify passed.
	Retire bool
	// StopAfter stops after this step (for staged runs); empty runs all.
	StopAfter Step
	// ReloadGrace is the least time promote waits after add, on top of
	// the plugins' reports that they have loaded the new version.
	ReloadGrace time.Duration
	// PluginTimeout and APIServerTimeout bound the two waits.
	PluginTimeout, APIServerTimeout time.Duration
	// PollInterval is how often the waits poll.
	PollInterval time.Duration
	// Out receives what each step does.
	Out io.Writer
}

// ErrStopped is returned when StopAfter ended the run early.
var ErrStopped = errors.New("stopped as asked")

func (p *Procedure) printf(format string, args ...any) { fmt.Fprintf(p.Out, format, args...) }

// open loads the state, or starts one from the backend's current key.
func (p *Procedure) open(ctx context.Context) (*State, bool, error) {
	s, ok, err := LoadState(p.StateDir)
	if err != nil {
		return nil, false, err
	}
	if ok {
		if s.Backend != p.Backend.Describe() || !slices.Equal(s.Resources, p.Resources) {
			return nil, false, fmt.Errorf("the rotation state in %s is for %s on %v, not %s on %v: finish it with the same flags, or move %s away to start another",
				p.StateDir, s.Backend, s.Resources, p.Backend.Describe(), p.Resources, p.StateDir)
		}
		return s, true, nil
	}
	old, err := p.Backend.Current(ctx)
	if err != nil {
		return nil, false, err
	}
	now := time.Now().UTC()
	return &State{Format: stateFormat, Backend: p.Backend.Describe(), Resources: p.Resources, Old: old,
		Steps: map[Step]StepRecord{}, Started: now}, false, nil
}

// describe says what step will do, given the state.
func (p *Procedure) describe(s *State, step Step) string {
	newID := "the new key"
	if s.New != nil {
		newID = s.New.KeyID
	}
	switch step {
	case StepAdd:
		return fmt.Sprintf("add a key version after %s to %s, decrypt-only where the backend allows (phase 1)", s.Old.KeyID, p.Backend.Describe())
	case StepPromote:
		if p.Backend.SinglePhase() {
			return fmt.Sprintf("check that %s is still the backend's current version (it encrypts since add-key)", newID)
		}
		return fmt.Sprintf("wait up to %s until every plugin %v reports (admin API) that it has loaded %s with the same key as the keyring files, then make it the encrypting version everywhere (phase 2)", p.PluginTimeout, p.Endpoints, newID)
	case StepPlugins:
		return fmt.Sprintf("wait up to %s until every plugin %v reports key_id %s", p.PluginTimeout, p.Endpoints, newID)
	case StepAPIServers:
		var names []string
		for _, c := range p.Canaries {
			names = append(names, c.APIServer)
		}
		ns := "?"
		if len(p.Canaries) > 0 {
			ns = p.Canaries[0].Namespace + "/" + p.Canaries[0].Name
		}
		return fmt.Sprintf("wait up to %s until every kube-apiserver %v stores a canary Secret (%s) under %s, read back from etcd", p.APIServerTimeout, names, ns, newID)
	case StepMigrate:
		switch p.MigrateEngine {
		case migrate.EngineSVM:
			return fmt.Sprintf("rewrite every object of %v with a StorageVersionMigration each, run by kube-controller-manager", p.Resources)
		case migrate.EngineAuto:
			return fmt.Sprintf("rewrite every object of %v with StorageVersionMigrations if a controller acts on them, else through the API, checkpointed in %s", p.Resources, p.checkpointDir(s))
		}
		return fmt.Sprintf("rewrite every object of %v through the API, checkpointed in %s", p.Resources, p.checkpointDir(s))
	case StepVerify:
		return fmt.Sprintf("scan %v in etcd: every value must be KMS v2 under %s", p.Resources, newID)
	case StepRetire:
		if !p.Retire {
			return "skipped (no --retire): old versions keep decrypting"
		}
		return fmt.Sprintf("re-verify if needed, then retire every version except %s in %s", newID, p.Backend.Describe())
	}
	return ""
}

func (p *Procedure) checkpointDir(s *State) string {
	v := "new"
	if s.New != nil {
		v = fmt.Sprintf("v%d", s.New.Version)
	}
	return filepath.Join(p.StateDir, "migrate-"+v)
}

// Plan prints what Run would do, without changing anything.
func (p *Procedure) Plan(ctx context.Context) error {
	s, resumed, err := p.open(ctx)
	if err != nil {
		return err
	}
	if resumed {
		p.printf("Resuming the rotation in %s (started %s).\n", StatePath(p.StateDir), s.Started.Format(time.RFC3339))
	} else {
		p.printf("New rotation; state will be kept in %s.\n", StatePath(p.StateDir))
	}
	p.printf("Backend: %s; current key: %s\n", p.Backend.Describe(), s.Old.KeyID)
	for i, step := range Steps {
		mark := "todo"
		switch {
		case s.Done(step):
			mark = "done"
		case step == StepRetire && !p.Retire:
			mark = "skip"
		}
		p.printf("  %d. [%s] %-15s %s\n", i+1, mark, step, p.describe(s, step))
		if step == p.StopAfter {
			p.printf("  (stops here: --stop-after %s)\n", step)
			break
		}
	}
	return nil
}

// Run runs every step not yet done, saving the state after each.
func (p *Procedure) Run(ctx context.Context) (err error) {
	if err := os.MkdirAll(p.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	s, resumed, err := p.open(ctx)
	if err != nil {
		return err
	}
	if s.Done(StepRetire) || (s.Done(StepVerify) && !p.Retire && p.StopAfter == "") {
		what := "complete"
		if !s.Done(StepRetire) {
			what = "complete except retire (run again with --retire to retire the old versions)"
		}
		p.printf("The rotation in %s is %s:\n%s", p.StateDir, what, s.Summary())
		if s.Done(StepRetire) {
			p.printf("Move %s away to start another rotation.\n", p.StateDir)
		}
		return nil
	}
	if resumed {
		p.printf("Resuming the rotation in %s:\n%s", StatePath(p.StateDir), s.Summary())
	} else if err := s.Save(p.StateDir); err != nil {
		return err
	}
	defer func() {
		if err == nil || errors.Is(err, ErrStopped) {
			return
		}
		s.LastError = err.Error()
		_ = s.Save(p.StateDir)
		p.printf("\nRotation stopped: %v\n\nState (%s):\n%s", err, StatePath(p.StateDir), s.Summary())
		if s.New != nil && !s.Done(StepRetire) {
			p.printf("Nothing was retired: %s and %s both still decrypt.\n", s.Old.KeyID, s.New.KeyID)
		}
		p.printf("Fix the cause, then run the same command again: it resumes at the first step not done.\n")
	}()

	r := &run{Procedure: p, s: s}
	for i, step := range Steps {
		if s.Done(step) {
			continue
		}
		if step == StepRetire && !p.Retire {
			p.printf("[%d/%d] %s: skipped: run again with --retire once you are ready to retire %s\n", i+1, len(Steps), step, s.Old.KeyID)
			break
		}
		p.printf("[%d/%d] %s: %s\n", i+1, len(Steps), step, p.describe(s, step))
		start := time.Now()
		note, err := r.step(ctx, step)
		if err != nil {
			return fmt.Errorf("step %s: %w", step, err)
		}
		s.mark(step, note)
		s.LastError = ""
		if err := s.Save(p.StateDir); err != nil {
			return err
		}
		p.printf("[%d/%d] %s: done in %s: %s\n", i+1, len(Steps), step, time.Since(start).Round(time.Millisecond), note)
		if step == p.StopAfter {
			p.printf("Stopped after %s as asked; run again to continue.\n", step)
			return ErrStopped
		}
	}
	p.printf("Rotation %s -> %s done.\n", s.Old.KeyID, s.New.KeyID)
	return nil
}

// run is one run of the procedure over its state.
type run struct {
	*Procedure
	s *State
	// verified is set once verify passed in this run, so that retire
	// does not verify twice in a row.
	verified bool
}

// step runs one step and returns what it did, for the state and the log.
func (r *run) step(ctx context.Context, step Step) (string, error) {
	steps := map[Step]func(context.Context) (string, error){
		StepAdd:        r.add,
		StepPromote:    r.promote,
		StepPlugins:    r.plugins,
		StepAPIServers: r.apiServers,
		StepMigrate:    r.migrate,
		StepVerify:     r.verifyStep,
		StepRetire:     r.retire,
	}
	fn, ok := steps[step]
	if !ok {
		return "", fmt.Errorf("unknown step %q", step)
	}
	return fn(ctx)
}

// add adds the new key version (or adopts the one an interrupted run
// added).
func (r *run) add(ctx context.Context) (string, error) {
	v, err := r.Backend.Add(ctx, r.s.Old.Version)
	if err != nil {
		return "", err
	}
	r.s.New = &v
	return "new version " + v.KeyID, nil
}

// promote makes the new version encrypt; for a two-phase backend only
// once every plugin reports that it loaded it.
func (r *run) promote(ctx context.Context) (string, error) {
	if !r.Backend.SinglePhase() {
		if wait := time.Until(r.s.Steps[StepAdd].At.Add(r.ReloadGrace)); wait > 0 {
			if err := migrate.Sleep(ctx, wait); err != nil {
				return "", err
			}
		}
		if err := r.waitLoaded(ctx, r.s); err != nil {
			return "", err
		}
	}
	if err := r.Backend.Promote(ctx, *r.s.New); err != nil {
		return "", err
	}
	return r.s.New.KeyID + " encrypts", nil
}

// plugins waits until every plugin reports the new key_id and is healthy.
func (r *run) plugins(ctx context.Context) (string, error) {
	for _, ep := range r.Endpoints {
		var last string
		err := poll(ctx, r.PollInterval, r.PluginTimeout, func(ctx context.Context) (bool, error) {
			id, healthy, err := r.PluginStatus(ctx, ep)
			last = fmt.Sprintf("key_id %q, healthy %v, error %v", id, healthy, err)
			return err == nil && healthy && id == r.s.New.KeyID, nil
		})
		if err != nil {
			return "", fmt.Errorf("plugin %s: %w (last Status: %s)", ep, err, last)
		}
	}
	return fmt.Sprintf("%d plugins report %s", len(r.Endpoints), r.s.New.KeyID), nil
}

// apiServers waits until every kube-apiserver stores a canary under the
// new key_id, then deletes the canaries.
func (r *run) apiServers(ctx context.Context) (string, error) {
	for _, c := range r.Canaries {
		var last string
		start := time.Now()
		err := poll(ctx, r.PollInterval, r.APIServerTimeout, func(ctx context.Context) (bool, error) {
			cl, err := c.Write(ctx)
			if err != nil {
				last = err.Error()
				return false, nil
			}
			last = "canary stored as " + cl.Label()
			return cl.Type == verify.KMSv2 && cl.KeyID == r.s.New.KeyID, nil
		})
		if err != nil {
			return "", fmt.Errorf("kube-apiserver %s: %w (last: %s)", c.APIServer, err, last)
		}
		r.printf("    %s encrypts with %s (after %s)\n", c.APIServer, r.s.New.KeyID, time.Since(start).Round(time.Second))
	}
	for _, c := range r.Canaries {
		if err := c.Delete(ctx); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("%d kube-apiservers encrypt with %s", len(r.Canaries), r.s.New.KeyID), nil
}

// migrate rewrites every stored object of the resources.
func (r *run) migrate(ctx context.Context) (string, error) {
	results, err := r.Migrate(ctx, r.checkpointDir(r.s))
	var parts []string
	for _, res := range results {
		if res.Engine == migrate.EngineSVM {
			parts = append(parts, fmt.Sprintf("%s: %d objects rewritten by a StorageVersionMigration in %s",
				res.Resource, res.Listed, res.Elapsed.Round(time.Second)))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: %d listed, %d rewritten, %d deleted meanwhile, %d conflicts retried",
			res.Resource, res.Listed, res.Rewritten, res.Deleted, res.Conflicts))
	}
	if err != nil {
		return "", err
	}
	return strings.Join(parts, "; "), nil
}

// verifyStep proves from etcd that every object is under the new key_id.
func (r *run) verifyStep(ctx context.Context) (string, error) {
	if err := r.verify(ctx, r.s); err != nil {
		return "", err
	}
	r.verified = true
	return "every object is under " + r.s.New.KeyID, nil
}

// retire verifies again (unless this run just did), retires every other
// version, and waits until every plugin is healthy on the new key_id.
func (r *run) retire(ctx context.Context) (string, error) {
	if !r.verified {
		r.printf("    verifying again before retiring anything\n")
		if err := r.verify(ctx, r.s); err != nil {
			return "", err
		}
	}
	ids, err := r.Backend.Retire(ctx, *r.s.New)
	if err != nil {
		return "", err
	}
	for _, ep := range r.Endpoints {
		err := poll(ctx, r.PollInterval, r.PluginTimeout, func(ctx context.Context) (bool, error) {
			id, healthy, err := r.PluginStatus(ctx, ep)
			return err == nil && healthy && id == r.s.New.KeyID, nil
		})
		if err != nil {
			return "", fmt.Errorf("plugin %s after retiring: %w", ep, err)
		}
	}
	if len(ids) == 0 {
		return "nothing left to retire", nil
	}
	return "retired " + strings.Join(ids, ", "), nil
}

// waitLoaded is promote's gate for a two-phase backend: every plugin must
// report, through its admin API, that it holds the new version under the
// new key_id (which names the key bytes), and no version with another key
// than the backend's. A plugin that does not answer, or has not loaded the
// version yet, is waited for up to PluginTimeout; a plugin whose keys
// differ stops the rotation at once. Either way nothing is promoted.
func (p *Procedure) waitLoaded(ctx context.Context, s *State) error {
	if p.PluginLoaded == nil {
		return errors.New("no way to ask the plugins what they have loaded: refusing to promote")
	}
	var ref []providers.KeyInfo
	if kl, ok := p.Backend.(keyLister); ok {
		var err error
		if ref, err = kl.Keys(ctx); err != nil {
			return err
		}
	}
	for _, ep := range p.Endpoints {
		var last string
		err := poll(ctx, p.PollInterval, p.PluginTimeout, func(ctx context.Context) (bool, error) {
			l, err := p.PluginLoaded(ctx, ep)
			if err != nil {
				last = err.Error()
				return false, nil
			}
			if err := SameKeys(p.Backend.Describe(), ref, "plugin "+ep, l.Versions); err != nil {
				return false, err
			}
			if has(l.Versions, *s.New) {
				return true, nil
			}
			last = notLoaded(l, *s.New)
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("plugin %s: %w (%s); nothing was promoted", ep, err, last)
		}
		p.printf("    plugin %s has loaded %s\n", ep, s.New.KeyID)
	}
	return nil
}

// has reports whether versions hold v, able to decrypt, under v's key_id.
func has(versions []providers.KeyInfo, v KeyVersion) bool {
	for _, i := range versions {
		if i.Version == v.Version && i.KeyID == v.KeyID && usable(i.State) {
			return true
		}
	}
	return false
}

// notLoaded says why a plugin does not hold v yet, with the likely cause.
func notLoaded(l Loaded, v KeyVersion) string {
	var have []string
	for _, i := range l.Versions {
		have = append(have, fmt.Sprintf("v%d %s", i.Version, i.State))
	}
	msg := fmt.Sprintf("it has loaded [%s], not %s", strings.Join(have, ", "), v.KeyID)
	switch {
	case l.LastReloadError != "":
		msg += "; its last reload failed: " + l.LastReloadError
	case l.ReloadInterval == 0:
		msg += "; its hot reload is off (--keyring-reload-interval 0): restart it, or give it an interval, so that it loads the keyring"
	}
	return msg
}

// verify scans; on offenders it forgets the migrate step and its
// checkpoints, so that the next run migrates everything again.
func (p *Procedure) verify(ctx context.Context, s *State) error {
	rep, err := p.Verify(ctx, verify.Expect{KeyIDs: []string{s.New.KeyID}})
	if err != nil {
		return err
	}
	if rep.OffenderCount == 0 {
		p.printf("    %d objects, all under %s\n", rep.Total, s.New.KeyID)
		return nil
	}
	s.undo(StepMigrate)
	s.undo(StepVerify)
	_ = os.RemoveAll(p.checkpointDir(s))
	return fmt.Errorf("refusing to retire anything: %w\nthe next run migrates again (an old-key object can come from an apiserver that still uses the old key, a restored backup, or a resource missing from the list)", rep.Err())
}

// poll calls cond every interval until it returns true, an error, or
// timeout passes.
func poll(ctx context.Context, interval, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := cond(ctx)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if err := migrate.Sleep(ctx, interval); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("timed out after %s", timeout)
			}
			return err
		}
	}
}
