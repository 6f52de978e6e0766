package rotation

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/local"
	"github.com/kms-plugin/kms-plugin/rotation/migrate"
	"github.com/kms-plugin/kms-plugin/rotation/verify"
)

// newKeyrings writes n copies of one new keyring and returns their paths.
func newKeyrings(t *testing.T, n int) []string {
	t.Helper()
	k, err := local.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i := range n {
		p := filepath.Join(t.TempDir(), "keyring.json")
		if i == 0 {
			if err := local.Create(p, k); err != nil {
				t.Fatal(err)
			}
		} else {
			b, err := os.ReadFile(paths[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		paths = append(paths, p)
	}
	return paths
}

func states(t *testing.T, path string) map[int64]providers.KeyState {
	t.Helper()
	k, err := local.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]providers.KeyState{}
	for _, v := range k.Versions {
		out[v.Version] = v.State
	}
	return out
}

func TestLocalBackendTwoPhases(t *testing.T) {
	ctx := context.Background()
	paths := newKeyrings(t, 3)
	b := &LocalBackend{Paths: paths}
	old, err := b.Current(ctx)
	if err != nil || old.Version != 1 {
		t.Fatalf("Current() = %+v, %v; want version 1", old, err)
	}

	v, err := b.Add(ctx, old.Version)
	if err != nil || v.Version != 2 {
		t.Fatalf("Add() = %+v, %v; want version 2", v, err)
	}
	// Idempotent: a second Add (a resumed run) adopts version 2.
	if again, err := b.Add(ctx, old.Version); err != nil || again != v {
		t.Fatalf("Add() again = %+v, %v; want %+v adopted", again, err, v)
	}
	for _, p := range paths {
		if got := states(t, p); got[1] != providers.StatePrimary || got[2] != providers.StateActive || len(got) != 2 {
			t.Errorf("after Add, %s = %v; want 1 primary, 2 active", p, got)
		}
	}
	if cur, err := b.Current(ctx); err != nil || cur != old {
		t.Errorf("Current() after Add = %+v, %v; want still %+v", cur, err, old)
	}

	if err := b.Promote(ctx, v); err != nil {
		t.Fatal(err)
	}
	if err := b.Promote(ctx, v); err != nil {
		t.Fatalf("Promote() again = %v", err)
	}
	if cur, err := b.Current(ctx); err != nil || cur != v {
		t.Errorf("Current() after Promote = %+v, %v; want %+v", cur, err, v)
	}

	ids, err := b.Retire(ctx, v)
	if err != nil || len(ids) != 1 || ids[0] != old.KeyID {
		t.Fatalf("Retire() = %v, %v; want [%s]", ids, err, old.KeyID)
	}
	if ids, err := b.Retire(ctx, v); err != nil || len(ids) != 0 {
		t.Errorf("Retire() again = %v, %v; want nothing left", ids, err)
	}
	for _, p := range paths {
		if got := states(t, p); got[1] != providers.StateRetired || got[2] != providers.StatePrimary {
			t.Errorf("after Retire, %s = %v; want 1 retired, 2 primary", p, got)
		}
	}
}

func TestLocalBackendRefuses(t *testing.T) {
	ctx := context.Background()
	a, b := newKeyrings(t, 1), newKeyrings(t, 1)
	if _, err := (&LocalBackend{Paths: []string{a[0], b[0]}}).Current(ctx); err == nil {
		t.Error("Current() over two different keyrings succeeded")
	}
	paths := newKeyrings(t, 1)
	be := &LocalBackend{Paths: paths}
	v, err := be.Add(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := be.Retire(ctx, v); err == nil {
		t.Error("Retire(keep a version that is not primary) succeeded")
	}
}

// TestLocalBackendRefusesDivergedCopies: an operator ran "keyring add" on
// each node instead of copying one file. Current, which rotate runs before
// anything else, refuses and names the copy that differs; nothing changes.
func TestLocalBackendRefusesDivergedCopies(t *testing.T) {
	ctx := context.Background()
	paths := newKeyrings(t, 3)
	for _, p := range paths {
		if _, err := local.Update(p, func(k *local.Keyring) error { _, err := k.Add(time.Now()); return err }); err != nil {
			t.Fatal(err)
		}
	}
	before := make([][]byte, len(paths))
	for i, p := range paths {
		before[i], _ = os.ReadFile(p)
	}
	be := &LocalBackend{Paths: paths}
	_, err := be.Current(ctx)
	if err == nil || !strings.Contains(err.Error(), paths[1]) || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("Current() over diverged copies = %v, want a refusal naming %s and version 2", err, paths[1])
	}
	if _, err := be.Add(ctx, 1); err == nil {
		t.Errorf("Add() over diverged copies succeeded")
	}
	for i, p := range paths {
		if after, _ := os.ReadFile(p); !bytes.Equal(after, before[i]) {
			t.Errorf("%s changed although the rotation was refused", p)
		}
	}
}

// fakeRun builds a Procedure over one keyring whose plugin and apiserver
// follow the keyring at once, and whose etcd holds what verify returns.
func fakeRun(t *testing.T, offenders *int64) (*Procedure, *bytes.Buffer) {
	t.Helper()
	paths := newKeyrings(t, 1)
	be := &LocalBackend{Paths: paths}
	var out bytes.Buffer
	p := &Procedure{
		Backend:   be,
		Endpoints: []string{"unix:///fake"},
		PluginStatus: func(ctx context.Context, _ string) (string, bool, error) {
			cur, err := be.Current(ctx)
			return cur.KeyID, err == nil, err
		},
		PluginLoaded: func(ctx context.Context, _ string) (Loaded, error) {
			infos, err := be.Keys(ctx)
			return Loaded{Versions: infos, ReloadInterval: time.Second}, err
		},
		Resources: []string{"secrets"},
		Migrate: func(context.Context, string) ([]migrate.Result, error) {
			return []migrate.Result{{Resource: "secrets", Listed: 10, Rewritten: 10}}, nil
		},
		Verify: func(_ context.Context, e verify.Expect) (verify.Report, error) {
			r := verify.Report{Total: 10, OffenderCount: *offenders}
			if *offenders > 0 {
				r.Offenders = []verify.Object{{Resource: "secrets", Namespace: "ns", Name: "old", Class: verify.Class{Type: verify.KMSv2, KeyID: "old"}}}
			}
			return r, nil
		},
		StateDir:         filepath.Join(t.TempDir(), "state"),
		PluginTimeout:    time.Second,
		APIServerTimeout: time.Second,
		PollInterval:     10 * time.Millisecond,
		Out:              &out,
	}
	return p, &out
}

func TestProcedureResumesAndRefusesRetire(t *testing.T) {
	ctx := context.Background()
	var offenders int64 = 1
	p, out := fakeRun(t, &offenders)
	p.Retire = true

	// Stop after each of the first steps; each run resumes.
	for _, step := range []Step{StepAdd, StepPromote, StepPlugins, StepAPIServers, StepMigrate} {
		p.StopAfter = step
		if err := p.Run(ctx); !errors.Is(err, ErrStopped) {
			t.Fatalf("Run(StopAfter %s) = %v, want ErrStopped\n%s", step, err, out)
		}
		s, ok, err := LoadState(p.StateDir)
		if err != nil || !ok || !s.Done(step) {
			t.Fatalf("state after %s: %+v, %v, %v", step, s, ok, err)
		}
	}
	p.StopAfter = ""
	out.Reset()
	err := p.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "refusing to retire") {
		t.Fatalf("Run() with an old-key object = %v, want a refusal\n%s", err, out)
	}
	if !strings.Contains(out.String(), "Nothing was retired") || !strings.Contains(err.Error(), "secrets ns/old") {
		t.Errorf("refusal does not name the offender or say nothing was retired: %v\n%s", err, out)
	}
	s, _, _ := LoadState(p.StateDir)
	if s.Done(StepMigrate) || s.Done(StepRetire) {
		t.Errorf("after a failed verify: migrate done %v, retire done %v; want both pending", s.Done(StepMigrate), s.Done(StepRetire))
	}
	if got := states(t, p.Backend.(*LocalBackend).Paths[0]); got[1] != providers.StateActive {
		t.Errorf("old version is %s after a refused retire, want active", got[1])
	}

	// Once the object is re-encrypted, the same command finishes.
	offenders = 0
	out.Reset()
	if err := p.Run(ctx); err != nil {
		t.Fatalf("Run() = %v\n%s", err, out)
	}
	if got := states(t, p.Backend.(*LocalBackend).Paths[0]); got[1] != providers.StateRetired || got[2] != providers.StatePrimary {
		t.Errorf("after Run: keyring %v, want 1 retired, 2 primary", got)
	}
	out.Reset()
	if err := p.Run(ctx); err != nil || !strings.Contains(out.String(), "is complete") {
		t.Errorf("Run() on a finished rotation = %v\n%s; want it to say it is complete", err, out)
	}
}

// TestPromoteGate: promote waits for every plugin to report the new key
// through its admin API, and stops with nothing promoted, naming the
// plugin and the likely cause, when one never loads it, is down, or holds
// another key.
func TestPromoteGate(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		loaded func(good Loaded) (Loaded, error)
		want   []string
	}{
		{"hot reload off", func(good Loaded) (Loaded, error) {
			return Loaded{Versions: good.Versions[:1]}, nil
		}, []string{"unix:///node-b", "timed out", "hot reload is off", "nothing was promoted"}},
		{"reload refused", func(good Loaded) (Loaded, error) {
			return Loaded{Versions: good.Versions[:1], ReloadInterval: time.Second, LastReloadError: "keyring has mode 0644"}, nil
		}, []string{"unix:///node-b", "last reload failed: keyring has mode 0644"}},
		{"plugin down", func(Loaded) (Loaded, error) {
			return Loaded{}, errors.New("connection refused")
		}, []string{"unix:///node-b", "timed out", "connection refused", "nothing was promoted"}},
		{"diverged key", func(good Loaded) (Loaded, error) {
			bad := append([]providers.KeyInfo(nil), good.Versions...)
			bad[0].Check = "0123456789abcdef"
			return Loaded{Versions: bad, ReloadInterval: time.Second}, nil
		}, []string{"plugin unix:///node-b holds another key", "version 1", "nothing was promoted"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var offenders int64
			p, out := fakeRun(t, &offenders)
			be := p.Backend.(*LocalBackend)
			p.Endpoints = []string{"unix:///node-a", "unix:///node-b"}
			p.PluginLoaded = func(ctx context.Context, ep string) (Loaded, error) {
				infos, err := be.Keys(ctx)
				good := Loaded{Versions: infos, ReloadInterval: time.Second}
				if err != nil || ep == "unix:///node-a" {
					return good, err
				}
				return c.loaded(good)
			}
			p.PluginTimeout = 200 * time.Millisecond
			err := p.Run(ctx)
			if err == nil {
				t.Fatalf("Run() = nil, want promote refused\n%s", out)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Run() = %v, want it to say %q", err, w)
				}
			}
			if got := states(t, be.Paths[0]); got[1] != providers.StatePrimary || got[2] != providers.StateActive {
				t.Errorf("keyring after a refused promote = %v, want 1 still primary, 2 active", got)
			}
			s, _, _ := LoadState(p.StateDir)
			if !s.Done(StepAdd) || s.Done(StepPromote) {
				t.Errorf("state: add done %v, promote done %v; want add done, promote pending", s.Done(StepAdd), s.Done(StepPromote))
			}
		})
	}
}

func TestPlan(t *testing.T) {
	ctx := context.Background()
	var offenders int64
	p, out := fakeRun(t, &offenders)
	p.Canaries = []*Canary{{APIServer: "https://10.0.0.1:6443", Namespace: "default", Name: "kmsctl-rotation-canary"}}
	if err := p.Plan(ctx); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"New rotation",
		"1. [todo] add-key",
		"4. [todo] wait-apiservers wait up to 1s until every kube-apiserver [https://10.0.0.1:6443] stores a canary Secret (default/kmsctl-rotation-canary)",
		"7. [skip] retire",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("Plan() does not print %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(p.StateDir); err == nil {
		t.Error("Plan() created the state dir")
	}

	// After two steps, the plan shows them done and names the new key.
	p.StopAfter = StepPromote
	if err := p.Run(ctx); !errors.Is(err, ErrStopped) {
		t.Fatal(err)
	}
	out.Reset()
	p.StopAfter, p.Retire = "", true
	if err := p.Plan(ctx); err != nil {
		t.Fatal(err)
	}
	s, _, _ := LoadState(p.StateDir)
	for _, want := range []string{"Resuming", "1. [done] add-key", "2. [done] promote-key", "3. [todo] wait-plugins", s.New.KeyID, "7. [todo] retire"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("Plan() while resuming does not print %q:\n%s", want, out)
		}
	}
}

func TestStateRefusesOtherFlags(t *testing.T) {
	ctx := context.Background()
	var offenders int64
	p, _ := fakeRun(t, &offenders)
	p.StopAfter = StepAdd
	if err := p.Run(ctx); !errors.Is(err, ErrStopped) {
		t.Fatal(err)
	}
	p.Resources = []string{"secrets", "configmaps"}
	if err := p.Run(ctx); err == nil || !strings.Contains(err.Error(), "is for") {
		t.Errorf("Run() with other resources on an existing state = %v, want a refusal", err)
	}
}
