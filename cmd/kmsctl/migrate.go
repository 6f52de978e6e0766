package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
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

// apiClients builds the dynamic client and a REST mapper for cfg.
func apiClients(cfg *rest.Config) (dynamic.Interface, meta.RESTMapper, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes discovery client: %w", err)
	}
	return dyn, restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), nil
}

// migrateFlags are the rewrite options shared by migrate and rotate.
func registerRewriteFlags(cmd *cobra.Command, o *migrate.Options) {
	cmd.Flags().IntVar(&o.Concurrency, "concurrency", 16, "writes in flight at once")
	cmd.Flags().Float64Var(&o.QPS, "qps", 0, "maximum API requests per second; 0 means no limit")
	cmd.Flags().Int64Var(&o.PageSize, "page-size", 500, "objects per list call")
}

func newMigrateCmd() *cobra.Command {
	var (
		kf    kubeFlags
		rf    resourceFlags
		opts  migrate.Options
		out   output
		quiet bool
	)
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Re-encrypt stored objects under the current key by writing each one back unchanged",
		Long: `List the given resources in pages and write every object back unchanged.
kube-apiserver stores again, under its current key, every object read under
another key_id or in plaintext; objects already under the current key cost
no etcd write.

A conflict re-reads the object and retries; an object deleted meanwhile is
skipped and counted. With --checkpoint-dir, a checkpoint per resource
records the last page fully written, so an interrupted run resumes there;
a finished resource is skipped until --restart. Progress goes to stderr, the
summary to stdout. Check the result with kmsctl verify.`,
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
			dyn, mapper, err := apiClients(cfg)
			if err != nil {
				return err
			}
			opts.Log = cmd.ErrOrStderr()
			opts.Progress = cmd.ErrOrStderr()
			if quiet {
				opts.Progress = nil
			}
			if opts.CheckpointDir == "" && !opts.DryRun {
				fmt.Fprintln(cmd.ErrOrStderr(), "migrate: no --checkpoint-dir: an interrupted run starts over")
			}
			results, runErr := migrate.Run(cmd.Context(), dyn, mapper, resources, opts)
			if err := printMigrateResults(cmd.OutOrStdout(), results, out); err != nil {
				return err
			}
			return runErr
		},
	}
	kf.register(cmd)
	rf.register(cmd)
	registerRewriteFlags(cmd, &opts)
	cmd.Flags().StringVar(&opts.CheckpointDir, "checkpoint-dir", "", "keep a checkpoint per resource here, to resume an interrupted run")
	cmd.Flags().BoolVar(&opts.Restart, "restart", false, "ignore existing checkpoints and start from the beginning")
	cmd.Flags().BoolVar(&opts.DryRun, "dry-run", false, "list and count the objects; write nothing")
	cmd.Flags().BoolVarP(&opts.Verbose, "verbose", "v", false, "log every page listed")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress on stderr")
	addOutputFlag(cmd, &out)
	return cmd
}

func printMigrateResults(w io.Writer, results []migrate.Result, out output) error {
	if out.structured() {
		return printData(w, out, results)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tLISTED\tREWRITTEN\tUNCHANGED\tDELETED\tCONFLICTS\tFAILED\tELAPSED\tOBJECTS/S")
	for _, r := range results {
		if r.AlreadyDone {
			fmt.Fprintf(tw, "%s\t(already done per checkpoint)\t\t\t\t\t\t\t\n", r.Resource)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%.0f\n", r.Resource, r.Listed, r.Rewritten, r.Unchanged,
			r.Deleted, r.Conflicts, r.Failed, r.Elapsed.Round(time.Millisecond), r.Rate())
	}
	return tw.Flush()
}
