package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/kms/contract"
	"github.com/kms-plugin/kms-plugin/providers/pkcs11"
	"github.com/kms-plugin/kms-plugin/providers/vault"
	"github.com/kms-plugin/kms-plugin/rotation"
	"github.com/kms-plugin/kms-plugin/rotation/migrate"
	"github.com/kms-plugin/kms-plugin/rotation/verify"
)

// rotateFlags are kmsctl rotate's flags; its methods build the rotation
// procedure from them.
type rotateFlags struct {
	backend    string
	keyrings   []string
	vaultCfg   vault.Config
	pkcs11Cfg  pkcs11.Config
	endpoints  []string
	apiservers []string
	canaryNS   string
	kf         kubeFlags
	ef         etcdFlags
	rf         resourceFlags
	engine     engineFlags
	proc       rotation.Procedure
	stopAfter  string
	dryRun     bool
	out        output
}

func newRotateCmd() *cobra.Command {
	r := &rotateFlags{vaultCfg: vault.DefaultConfig(), pkcs11Cfg: pkcs11.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate the key end to end: new key everywhere, wait, migrate, verify, retire",
		Long: `Run a whole key rotation, one step at a time:

  1. add-key          add a key version (local: to the first --keyring, then
                      copied to the others, decrypt-only; first refuses if
                      any two keyring files hold different keys)
  2. promote-key      make it the encrypting version everywhere (local: only
                      once every --plugin-endpoint reports, through its admin
                      API, that it has loaded that very key; a plugin whose
                      keys differ, or that has not loaded it within
                      --plugin-timeout, stops the rotation, named, with
                      nothing promoted)
  3. wait-plugins     every --plugin-endpoint reports the new key_id
  4. wait-apiservers  every kube-apiserver (--apiserver, default the kubeconfig's)
                      stores a canary Secret under the new key_id, read from etcd
  5. migrate          rewrite every object of the resources through the API
  6. verify           etcd holds nothing under another key_id, nor in plaintext
  7. retire           with --retire only, and only after verify passed: retire
                      the other versions (local: keyring state; Vault:
                      min_decryption_version; PKCS#11: CKA_DECRYPT false)

Each step is idempotent and recorded in --state-dir; after an interruption or
a failure, run the same command again and it resumes at the first step not
done. A failed verify never retires anything, and makes the next run migrate
again. --dry-run prints the plan and changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return r.run(cmd) },
	}
	r.register(cmd)
	return cmd
}

func (r *rotateFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&r.backend, "backend", "local", "where the key lives: local, vault or pkcs11")
	f.StringSliceVar(&r.keyrings, "keyring", nil, "local: keyring file of each control-plane node, as this host sees it (repeat or comma-separate)")
	addVaultFlags(f, &r.vaultCfg)
	addPKCS11Flags(f, &r.pkcs11Cfg)
	f.StringSliceVar(&r.endpoints, "plugin-endpoint", []string{contract.DefaultEndpoint}, "every kms-plugin that must report the new key_id (repeat for each node)")
	f.StringSliceVar(&r.apiservers, "apiserver", nil, "every kube-apiserver URL to prove with a canary write (default: the kubeconfig's server); list each one behind a load balancer")
	f.StringVar(&r.canaryNS, "canary-namespace", "default", "namespace of the canary Secret")
	r.kf.register(cmd)
	r.ef.register(cmd)
	r.rf.register(cmd)
	r.engine.register(cmd)
	f.StringVar(&r.proc.StateDir, "state-dir", "kmsctl-rotate-state", "where the rotation keeps its state and migrate checkpoints")
	f.BoolVar(&r.proc.Retire, "retire", false, "retire the old versions once verify passed")
	f.BoolVar(&r.dryRun, "dry-run", false, "print the plan and change nothing")
	addOutputFlag(cmd, &r.out)
	f.StringVar(&r.stopAfter, "stop-after", "", "stop after this step (add-key, promote-key, wait-plugins, wait-apiservers, migrate, verify)")
	f.DurationVar(&r.proc.ReloadGrace, "reload-grace", 0, "local: least wait between add and promote; promote always waits (up to --plugin-timeout) until every plugin reports it has loaded the new key")
	f.DurationVar(&r.proc.PluginTimeout, "plugin-timeout", 2*time.Minute, "how long to wait for the plugins (Vault, PKCS#11: longer than the plugins' --vault-refresh-interval or --pkcs11-refresh-interval)")
	f.DurationVar(&r.proc.APIServerTimeout, "apiserver-timeout", 5*time.Minute, "how long to wait for each kube-apiserver (it polls Status every 60 s)")
	f.DurationVar(&r.proc.PollInterval, "poll-interval", 2*time.Second, "how often the waits poll")
}

// run builds the procedure and runs it (or prints its plan).
func (r *rotateFlags) run(cmd *cobra.Command) error {
	ctx := cmd.Context()
	proc := &r.proc
	var err error
	if proc.StopAfter, err = rotation.ParseStep(r.stopAfter); err != nil {
		return err
	}
	if proc.Resources, err = r.rf.list(); err != nil {
		return err
	}
	proc.Out = cmd.OutOrStdout()
	if r.out.structured() {
		if r.dryRun {
			return errors.New("--dry-run prints a plan for people: drop -o")
		}
		// Progress to stderr; stdout gets the state, as a program
		// reads it, however the run ends.
		proc.Out = cmd.ErrOrStderr()
		defer func() {
			if s, ok, err := rotation.LoadState(proc.StateDir); err == nil && ok {
				_ = printData(cmd.OutOrStdout(), r.out, s)
			}
		}()
	}
	proc.Endpoints = r.endpoints
	proc.PluginStatus = pluginStatus
	proc.PluginLoaded = pluginLoaded
	closeBackend, err := r.openBackend(cmd)
	if err != nil {
		return err
	}
	defer closeBackend()

	etcd, err := r.ef.client()
	if err != nil {
		return err
	}
	defer etcd.Close()
	cfg, err := r.kf.restConfig()
	if err != nil {
		return err
	}
	if proc.Canaries, err = r.canaries(cfg, etcd); err != nil {
		return err
	}
	proc.MigrateEngine = r.engine.engine
	if r.dryRun {
		return proc.Plan(ctx)
	}
	clients, err := apiClients(cfg)
	if err != nil {
		return err
	}
	proc.Migrate = func(ctx context.Context, dir string) ([]migrate.Result, error) {
		return r.engine.run(ctx, cmd, clients, proc.Resources, dir, false)
	}
	proc.Verify = func(ctx context.Context, expect verify.Expect) (verify.Report, error) {
		return verify.Scan(ctx, etcd, verify.Options{
			EtcdPrefix: r.ef.prefix, Resources: proc.Resources, Expect: expect, MaxOffenders: 20,
		})
	}
	err = proc.Run(ctx)
	if errors.Is(err, rotation.ErrStopped) {
		return nil
	}
	return err
}

// openBackend sets the procedure's backend from --backend and returns
// what closes it.
func (r *rotateFlags) openBackend(cmd *cobra.Command) (func(), error) {
	switch r.backend {
	case "local":
		if len(r.keyrings) == 0 {
			return nil, errors.New("--backend local needs --keyring (repeat it for each control-plane node's copy)")
		}
		r.proc.Backend = &rotation.LocalBackend{Paths: r.keyrings}
		return func() {}, nil
	case "vault":
		p, err := openVault(cmd, r.vaultCfg)
		if err != nil {
			return nil, err
		}
		r.proc.Backend = &rotation.VaultBackend{Key: p, Name: r.vaultCfg.Mount + "/" + r.vaultCfg.Key}
		return func() { _ = p.Close() }, nil
	case "pkcs11":
		b, closeFn, err := openPKCS11Backend(cmd, r.pkcs11Cfg)
		if err != nil {
			return nil, err
		}
		r.proc.Backend = b
		return closeFn, nil
	}
	return nil, fmt.Errorf("--backend %q: want local, vault or pkcs11", r.backend)
}

// canaries are the canary Secrets that prove each kube-apiserver
// (--apiserver, default the kubeconfig's) encrypts with the new key_id.
func (r *rotateFlags) canaries(cfg *rest.Config, etcd *clientv3.Client) ([]*rotation.Canary, error) {
	apiservers := r.apiservers
	if len(apiservers) == 0 {
		apiservers = []string{cfg.Host}
	}
	var out []*rotation.Canary
	for i, url := range apiservers {
		c := rest.CopyConfig(cfg)
		c.Host = url
		if !r.dryRun {
			if err := reachAPIServer(c); err != nil {
				return nil, err
			}
		}
		cs, err := kubernetes.NewForConfig(c)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client for %s: %w", url, err)
		}
		name := "kmsctl-rotation-canary"
		if len(apiservers) > 1 {
			name = fmt.Sprintf("%s-%d", name, i)
		}
		out = append(out, &rotation.Canary{
			APIServer: url, Client: cs, Namespace: r.canaryNS, Name: name, Etcd: etcd, EtcdPrefix: r.ef.prefix,
		})
	}
	return out, nil
}

// pluginLoaded asks a kms-plugin, through its admin API, what it has
// loaded.
func pluginLoaded(ctx context.Context, endpoint string) (rotation.Loaded, error) {
	_, conn, err := kms.Dial(endpoint)
	if err != nil {
		return rotation.Loaded{}, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := getLoaded(ctx, conn)
	switch {
	case err != nil:
		return rotation.Loaded{}, fmt.Errorf("admin API: %w", err)
	case l == nil:
		return rotation.Loaded{}, errors.New("it serves no kms-plugin admin API (another KMS plugin, or an older kms-plugin): upgrade it first")
	}
	interval, err := time.ParseDuration(l.ReloadInterval)
	if err != nil {
		return rotation.Loaded{}, fmt.Errorf("admin API: reload interval %q: %w", l.ReloadInterval, err)
	}
	return rotation.Loaded{Versions: l.Versions, ReloadInterval: interval, LastReloadError: l.LastReloadError}, nil
}

// pluginStatus calls Status on a KMS v2 plugin.
func pluginStatus(ctx context.Context, endpoint string) (string, bool, error) {
	resp, conn, err := statusOf(ctx, endpoint, 5*time.Second)
	if err != nil {
		return "", false, err
	}
	_ = conn.Close()
	return resp.GetKeyId(), healthy(resp), nil
}
