package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/kms-plugin/kms-plugin/rotation/migrate"
)

// reachAPIServer fails fast, with the address, when kube-apiserver at
// cfg.Host does not answer within the connect timeout: the clients
// connect lazily, and would otherwise fail only mid-run, or hang.
func reachAPIServer(cfg *rest.Config) error {
	c := rest.CopyConfig(cfg)
	if c.Timeout <= 0 || c.Timeout > connectTimeout {
		c.Timeout = connectTimeout
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c)
	if err != nil {
		return fmt.Errorf("kubernetes client for %s: %w", c.Host, err)
	}
	if _, err := dc.ServerVersion(); err != nil {
		return fmt.Errorf("cannot reach kube-apiserver at %s within %s: %w", c.Host, c.Timeout, err)
	}
	return nil
}

// connectTimeout bounds the first call to a server kmsctl has not reached
// yet.
const connectTimeout = 10 * time.Second

// apiClients builds the dynamic client, the discovery client and a REST
// mapper for cfg.
func apiClients(cfg *rest.Config) (migrate.Clients, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return migrate.Clients{}, fmt.Errorf("kubernetes client: %w", err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return migrate.Clients{}, fmt.Errorf("kubernetes discovery client: %w", err)
	}
	return migrate.Clients{
		Dynamic: dyn, Discovery: dc, Mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)),
	}, nil
}

// engineFlags choose and shape the engine that migrate and rotate's
// migrate step use.
type engineFlags struct {
	engine string
	client migrate.Options
	svm    migrate.SVMOptions
}

func (e *engineFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&e.engine, "engine", migrate.EngineAuto, "how to re-encrypt: "+strings.Join(migrate.Engines, ", ")+
		" (auto: StorageVersionMigration when the cluster serves it and a controller acts on it, else client)")
	cmd.Flags().IntVar(&e.client.Concurrency, "concurrency", 16, "client engine: writes in flight at once")
	cmd.Flags().Float64Var(&e.client.QPS, "qps", 0, "client engine: maximum API requests per second; 0 means no limit")
	cmd.Flags().Int64Var(&e.client.PageSize, "page-size", 500, "client engine: objects per list call")
	cmd.Flags().DurationVar(&e.svm.NoControllerAfter, "svm-controller-timeout", 30*time.Second,
		"storage-version-migration engine: how long a migration may stay without status before kmsctl decides no controller acts on it")
	cmd.Flags().BoolVar(&e.svm.Keep, "svm-keep", false, "storage-version-migration engine: keep finished StorageVersionMigration objects")
	cmd.Flags().DurationVar(&e.svm.Timeout, "svm-timeout", 0,
		"storage-version-migration engine: give up on a resource whose migration runs longer than this, leaving it running for the next run to adopt; 0 means no limit")
}

// run re-encrypts resources with the chosen engine, logging and showing
// progress on stderr.
func (e *engineFlags) run(ctx context.Context, cmd *cobra.Command, c migrate.Clients, resources []string, checkpointDir string, quiet bool) ([]migrate.Result, error) {
	if !migrate.ValidEngine(e.engine) {
		return nil, fmt.Errorf("--engine %q: want one of %s", e.engine, strings.Join(migrate.Engines, ", "))
	}
	o, svm := e.client, e.svm
	o.CheckpointDir = checkpointDir
	o.Log, o.Progress = cmd.ErrOrStderr(), cmd.ErrOrStderr()
	svm.Log, svm.Progress = cmd.ErrOrStderr(), cmd.ErrOrStderr()
	if quiet {
		o.Progress, svm.Progress = nil, nil
	}
	return migrate.RunEngine(ctx, c, e.engine, resources, o, svm)
}

func newMigrateCmd() *cobra.Command {
	var (
		kf                              kubeFlags
		rf                              resourceFlags
		ef                              engineFlags
		out                             output
		checkpointDir                   string
		restart, dryRun, verbose, quiet bool
	)
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Re-encrypt stored objects under the current key",
		Long: `Make kube-apiserver store every object of the given resources again, so
that each is encrypted under its current key. Two engines do it:

client: list the resources in pages and write every object back unchanged.
  kube-apiserver stores again every object read under another key_id or in
  plaintext; objects already under the current key cost no etcd write. A
  conflict re-reads the object and retries; an object deleted meanwhile is
  skipped and counted. With --checkpoint-dir, a checkpoint per resource
  records the last page fully written, so an interrupted run resumes there;
  a finished resource is skipped until --restart.

storage-version-migration: create one StorageVersionMigration per resource
  (storagemigration.k8s.io) and follow its conditions while
  kube-controller-manager rewrites the objects inside the cluster, with no
  connection held by kmsctl. A run adopts the migration an interrupted one
  left running, and deletes finished ones unless --svm-keep.

auto (the default) uses storage-version-migration when the cluster serves
the API and a controller acts on it, and client otherwise. Progress goes to
stderr, the summary to stdout. Check the result with kmsctl verify.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resources, err := rf.list()
			if err != nil {
				return err
			}
			cfg, err := kf.restConfig()
			if err != nil {
				return err
			}
			if err := reachAPIServer(cfg); err != nil {
				return err
			}
			clients, err := apiClients(cfg)
			if err != nil {
				return err
			}
			ef.client.Restart, ef.client.DryRun, ef.client.Verbose = restart, dryRun, verbose
			if checkpointDir == "" && !dryRun && ef.engine != migrate.EngineSVM {
				fmt.Fprintln(cmd.ErrOrStderr(), "migrate: no --checkpoint-dir: an interrupted client-engine run starts over")
			}
			results, runErr := ef.run(cmd.Context(), cmd, clients, resources, checkpointDir, quiet)
			if err := printMigrateResults(cmd.OutOrStdout(), results, out); err != nil {
				return err
			}
			return runErr
		},
	}
	kf.register(cmd)
	rf.register(cmd)
	ef.register(cmd)
	cmd.Flags().StringVar(&checkpointDir, "checkpoint-dir", "", "client engine: keep a checkpoint per resource here, to resume an interrupted run")
	cmd.Flags().BoolVar(&restart, "restart", false, "client engine: ignore existing checkpoints and start from the beginning")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list and count the objects; write nothing (client engine)")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "client engine: log every page listed")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress on stderr")
	addOutputFlag(cmd, &out)
	return cmd
}

func printMigrateResults(w io.Writer, results []migrate.Result, out output) error {
	if out.structured() {
		return printData(w, out, results)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tENGINE\tLISTED\tREWRITTEN\tUNCHANGED\tDELETED\tCONFLICTS\tFAILED\tELAPSED\tOBJECTS/S")
	for _, r := range results {
		switch {
		case r.AlreadyDone:
			fmt.Fprintf(tw, "%s\t%s\t(already done per checkpoint)\t\t\t\t\t\t\t\n", r.Resource, r.Engine)
		case r.Engine == migrate.EngineSVM:
			// The controller counts nothing per object; LISTED is the
			// number of objects when the migration started.
			fmt.Fprintf(tw, "%s\t%s\t%d\t-\t-\t-\t-\t-\t%s\t%.0f\n", r.Resource, r.Engine, r.Listed,
				r.Elapsed.Round(time.Millisecond), r.Rate())
		default:
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%.0f\n", r.Resource, r.Engine, r.Listed, r.Rewritten, r.Unchanged,
				r.Deleted, r.Conflicts, r.Failed, r.Elapsed.Round(time.Millisecond), r.Rate())
		}
	}
	return tw.Flush()
}
