package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
)

// Clients are what the engines talk to.
type Clients struct {
	Dynamic   dynamic.Interface
	Discovery discovery.DiscoveryInterface
	Mapper    meta.RESTMapper
}

// RunEngine re-encrypts resources with the named engine (EngineAuto,
// EngineClient or EngineSVM). Under EngineAuto, a cluster that does not
// serve StorageVersionMigration, or where no controller acts on one, gets
// the client engine for every resource not yet done, and Log says so.
func RunEngine(ctx context.Context, c Clients, engine string, resources []string, opts Options, svm SVMOptions) ([]Result, error) {
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	switch engine {
	case EngineClient:
		return Run(ctx, c.Dynamic, c.Mapper, resources, opts)
	case EngineSVM:
		if opts.DryRun {
			return nil, fmt.Errorf("--dry-run needs the %s engine: a StorageVersionMigration writes every object", EngineClient)
		}
		return RunSVM(ctx, c.Dynamic, c.Discovery, c.Mapper, resources, svm)
	case EngineAuto, "":
		if opts.DryRun {
			return Run(ctx, c.Dynamic, c.Mapper, resources, opts)
		}
		results, err := RunSVM(ctx, c.Dynamic, c.Discovery, c.Mapper, resources, svm)
		if !errors.Is(err, ErrSVMUnavailable) {
			return results, err
		}
		// Every result but the last is a resource the controller
		// finished; the last one never started.
		done := results[:max(len(results)-1, 0)]
		fmt.Fprintf(log, "%v; using the %s engine\n", err, EngineClient)
		rest, err := Run(ctx, c.Dynamic, c.Mapper, resources[len(done):], opts)
		return append(done, rest...), err
	default:
		return nil, fmt.Errorf("unknown migrate engine %q: want one of %s", engine, strings.Join(Engines, ", "))
	}
}

// ValidEngine reports whether name is an engine RunEngine knows.
func ValidEngine(name string) bool { return slices.Contains(Engines, name) }
