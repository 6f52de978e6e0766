package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/kubernetes"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/kms/contract"
	"github.com/kms-plugin/kms-plugin/providers/local"
	"github.com/kms-plugin/kms-plugin/providers/vault"
	"github.com/kms-plugin/kms-plugin/rotation/encryptionconfig"
	"github.com/kms-plugin/kms-plugin/rotation/verify"
)

// defaultEncryptionConfig is where the Kubernetes documentation, and so
// most kubeadm clusters, keep the EncryptionConfiguration.
const defaultEncryptionConfig = "/etc/kubernetes/enc/enc.yaml"

// Results of a doctor check.
const (
	checkPass = "PASS"
	checkWarn = "WARN"
	checkFail = "FAIL"
)

// check is one line of kmsctl doctor's report.
type check struct {
	Check  string `json:"check"`
	Result string `json:"result"`
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

type doctorReport struct {
	Checks []check `json:"checks"`
	Failed int     `json:"failed"`
	Warned int     `json:"warned"`
}

func (r *doctorReport) add(result, name, detail, hint string) {
	r.Checks = append(r.Checks, check{Check: name, Result: result, Detail: detail, Hint: hint})
	switch result {
	case checkFail:
		r.Failed++
	case checkWarn:
		r.Warned++
	}
}

type doctorFlags struct {
	encryptionConfig string
	keyrings         []string
	interval         time.Duration
	timeout          time.Duration
	sample           int64
	kf               kubeFlags
	ef               etcdFlags
	vaultCfg         vault.Config
	out              output
}

func newDoctorCmd() *cobra.Command {
	d := &doctorFlags{vaultCfg: vault.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check a control-plane node's KMS setup, one line per check with a hint",
		Long: `Check what kube-apiserver needs from kms-plugin on this node, and say how
to fix what is wrong. It reads the EncryptionConfiguration and, for each KMS
v2 provider in it, checks that the endpoint is a socket with a sane mode,
that the plugin answers Status healthy with version v2, and that its key_id
is stable across two polls.

With --keyring, it checks each local keyring file (mode, owner, parse).
With --vault-key (and the plugin's other --vault-* flags), it checks that
Vault answers with the key, the token's remaining lifetime, and that the
token may do exactly what the plugin needs (sys/capabilities-self).
With etcd flags (--endpoints or ETCDCTL_ENDPOINTS), it samples stored
objects of each resource and checks that the KMS provider names their
prefixes carry are ones the configuration still lists. With a kubeconfig
(--kubeconfig or KUBECONFIG), it checks that kube-apiserver's own metrics
report the plugin's current key.

Every check is one line: PASS, WARN or FAIL. Any FAIL exits non-zero.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return d.run(cmd) },
	}
	f := cmd.Flags()
	f.StringVar(&d.encryptionConfig, "encryption-config", defaultEncryptionConfig, "kube-apiserver's EncryptionConfiguration")
	f.StringSliceVar(&d.keyrings, "keyring", nil, "local keyring files to check (repeat or comma-separate)")
	f.DurationVar(&d.interval, "interval", 2*time.Second, "time between the two Status polls that must report the same key_id")
	f.DurationVar(&d.timeout, "timeout", 3*time.Second, "how long each call may take")
	f.Int64Var(&d.sample, "sample", 200, "stored objects per resource to sample from etcd, when etcd flags are given")
	d.kf.register(cmd)
	d.ef.register(cmd)
	addVaultFlags(f, &d.vaultCfg)
	addOutputFlag(cmd, &d.out)
	return cmd
}

func (d *doctorFlags) run(cmd *cobra.Command) error {
	ctx := cmd.Context()
	r := &doctorReport{}
	cfg, err := encryptionconfig.Load(d.encryptionConfig)
	if err != nil {
		r.add(checkFail, "encryption config", err.Error(), "point --encryption-config at kube-apiserver's --encryption-provider-config file")
	} else {
		providers := kmsProviders(cfg)
		if len(providers) == 0 {
			r.add(checkWarn, "encryption config", d.encryptionConfig+" lists no KMS v2 provider", "add a kms provider with apiVersion v2 (deploy/encryption-config)")
		} else {
			r.add(checkPass, "encryption config", fmt.Sprintf("%s: %d KMS v2 provider(s)", d.encryptionConfig, len(providers)), "")
		}
		keyIDs := map[string]string{}
		for _, p := range providers {
			if id := d.checkProvider(ctx, r, p); id != "" {
				keyIDs[p.Name] = id
			}
		}
		if d.etcdGiven(cmd) {
			d.checkEtcd(ctx, r, cfg)
		}
		if d.kubeGiven(cmd) {
			d.checkAPIServer(ctx, r, providers, keyIDs)
		}
	}
	for _, path := range d.keyrings {
		checkKeyring(r, path)
	}
	if d.vaultCfg.Key != "" {
		d.checkVault(cmd, r)
	}
	if err := d.print(cmd.OutOrStdout(), r); err != nil {
		return err
	}
	if r.Failed > 0 {
		return fmt.Errorf("%d of %d checks failed", r.Failed, len(r.Checks))
	}
	return nil
}

// kmsProviders lists the KMS v2 providers of cfg once each, in file order.
func kmsProviders(cfg []encryptionconfig.Resources) []encryptionconfig.Provider {
	var out []encryptionconfig.Provider
	seen := map[string]bool{}
	for _, res := range cfg {
		for _, p := range res.Providers {
			if p.Type == "kms-v2" && !seen[p.Name] {
				seen[p.Name] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// checkProvider checks one provider's socket and Status, and returns its
// key_id when it answered healthy.
func (d *doctorFlags) checkProvider(ctx context.Context, r *doctorReport, p encryptionconfig.Provider) string {
	name := "provider " + p.Name
	ep, err := kms.ParseEndpoint(p.Endpoint)
	if err != nil {
		r.add(checkFail, name+" endpoint", err.Error(), "the endpoint must be unix:///path")
		return ""
	}
	if !ep.Abstract() {
		fi, err := os.Stat(ep.Address)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			r.add(checkFail, name+" socket", ep.Address+" does not exist", "start kms-plugin with --listen "+p.Endpoint)
			return ""
		case err != nil:
			r.add(checkFail, name+" socket", err.Error(), "run kmsctl doctor as root or as the plugin's user")
			return ""
		case fi.Mode().Type() != fs.ModeSocket:
			r.add(checkFail, name+" socket", ep.Address+" is not a socket", "remove it and restart the plugin, or fix --listen")
			return ""
		case fi.Mode().Perm()&0o007 != 0:
			r.add(checkWarn, name+" socket", fmt.Sprintf("%s is mode %04o: any local user can call the plugin", ep.Address, fi.Mode().Perm()), "kms-plugin makes its socket 0600; something changed it")
		default:
			owner := ""
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				owner = fmt.Sprintf(", owner uid %d", st.Uid)
			}
			r.add(checkPass, name+" socket", fmt.Sprintf("%s, mode %04o%s", ep.Address, fi.Mode().Perm(), owner), "")
		}
	}
	poll := func() (string, error) {
		cctx, cancel := context.WithTimeout(ctx, d.timeout)
		defer cancel()
		resp, conn, err := statusOf(cctx, p.Endpoint, d.timeout)
		if err != nil {
			return "", err
		}
		_ = conn.Close()
		switch {
		case resp.GetVersion() != contract.APIVersion:
			return "", fmt.Errorf("the plugin reports version %q, want %q", resp.GetVersion(), contract.APIVersion)
		case resp.GetHealthz() != contract.HealthzOK:
			return "", fmt.Errorf("the plugin reports healthz %q", resp.GetHealthz())
		}
		return resp.GetKeyId(), nil
	}
	first, err := poll()
	if err != nil {
		r.add(checkFail, name+" status", err.Error(), "see the plugin's log and /healthz; kube-apiserver cannot encrypt or decrypt with this provider")
		return ""
	}
	r.add(checkPass, name+" status", "healthy, key_id "+first, "")
	time.Sleep(d.interval)
	second, err := poll()
	switch {
	case err != nil:
		r.add(checkFail, name+" key_id", "second Status poll: "+err.Error(), "the plugin is flapping: see its log")
	case second != first:
		r.add(checkWarn, name+" key_id", fmt.Sprintf("changed from %s to %s between two polls %s apart", first, second, d.interval),
			"a rotation in progress, or plugins on different keys behind one socket; run again")
	default:
		r.add(checkPass, name+" key_id", "stable across two polls "+d.interval.String()+" apart", "")
	}
	return second
}

// checkKeyring loads a keyring file as kmsctl would, which checks its
// mode, owner and content.
func checkKeyring(r *doctorReport, path string) {
	k, err := local.LoadAsOperator(path)
	if err != nil {
		r.add(checkFail, "keyring "+path, err.Error(), "")
		return
	}
	primary := "none"
	if p := k.Primary(); p != nil {
		primary = k.KeyID(p.Version)
	}
	r.add(checkPass, "keyring "+path, fmt.Sprintf("mode and owner accepted, parses; %d versions, primary %s", len(k.Infos()), primary), "")
}

// tokenWarnTTL is how close to expiry a token must be for a warning: the
// plugin renews a renewable token long before, so a token this close is
// one that can no longer be renewed.
const tokenWarnTTL = time.Hour

// checkVault logs in as the plugin would and checks the key, the token's
// lifetime and the token's capabilities against the plugin's policy.
func (d *doctorFlags) checkVault(cmd *cobra.Command, r *doctorReport) {
	name := "vault " + d.vaultCfg.Mount + "/" + d.vaultCfg.Key
	p, err := openVault(cmd, d.vaultCfg)
	if err != nil {
		r.add(checkFail, name, err.Error(), "check --vault-addr, the auth flags and the token or credentials files")
		return
	}
	defer p.Close()
	key, err := p.Current()
	if err != nil {
		r.add(checkFail, name, err.Error(), "Vault is unreachable, sealed, or the key is missing: see docs/vault.md")
		return
	}
	r.add(checkPass, name, "reachable; current key_id "+key.ID, "")
	ctx, cancel := context.WithTimeout(cmd.Context(), d.timeout)
	defer cancel()
	a, err := p.CheckAccess(ctx)
	if err != nil {
		r.add(checkFail, "vault token", err.Error(), "")
		return
	}
	switch {
	case !a.Expires:
		r.add(checkPass, "vault token", "never expires", "")
	case a.TTL < tokenWarnTTL:
		r.add(checkWarn, "vault token", fmt.Sprintf("expires in %s", a.TTL.Round(time.Second)), "raise token_max_ttl, or let the plugin log in again (approle, cert, jwt)")
	default:
		r.add(checkPass, "vault token", fmt.Sprintf("expires in %s", a.TTL.Round(time.Second)), "")
	}
	switch {
	case len(a.Missing) > 0:
		r.add(checkFail, "vault policy", "the token lacks "+strings.Join(a.Missing, ", "), "apply kmsctl vault policy --role plugin to the token's role")
	case len(a.Extra) > 0:
		r.add(checkWarn, "vault policy", "the token may do more than the plugin needs: "+strings.Join(a.Extra, ", "), "least privilege: give the plugin only kmsctl vault policy --role plugin")
	default:
		r.add(checkPass, "vault policy", "exactly what the plugin needs: update on encrypt and decrypt, read on the key", "")
	}
}

func (d *doctorFlags) etcdGiven(cmd *cobra.Command) bool {
	return cmd.Flags().Changed("endpoints") || os.Getenv("ETCDCTL_ENDPOINTS") != ""
}

func (d *doctorFlags) kubeGiven(cmd *cobra.Command) bool {
	return cmd.Flags().Changed("kubeconfig") || os.Getenv("KUBECONFIG") != ""
}

// checkEtcd samples each encrypted resource's stored objects and checks
// that every KMS provider name their prefixes carry is still configured
// for that resource.
func (d *doctorFlags) checkEtcd(ctx context.Context, r *doctorReport, cfg []encryptionconfig.Resources) {
	etcd, err := d.ef.client()
	if err != nil {
		r.add(checkFail, "etcd", err.Error(), "check --endpoints and the TLS flags (--cacert, --cert, --key)")
		return
	}
	defer etcd.Close()
	for _, res := range cfg {
		configured := map[string]bool{}
		writer := ""
		for i, p := range res.Providers {
			if p.Type == "kms-v2" || p.Type == "kms-v1" {
				configured[p.Name] = true
				if i == 0 {
					writer = p.Name
				}
			}
		}
		if len(configured) == 0 {
			continue
		}
		for _, resource := range res.Resources {
			if strings.Contains(resource, "*") {
				r.add(checkWarn, "etcd "+resource, "a wildcard is not sampled", "run kmsctl verify --resources with the resources it covers")
				continue
			}
			d.sampleResource(ctx, r, etcd, resource, configured, writer)
		}
	}
}

func (d *doctorFlags) sampleResource(ctx context.Context, r *doctorReport, etcd *clientv3.Client, resource string, configured map[string]bool, writer string) {
	name := "etcd " + resource
	prefix, err := verify.KeyPrefix(d.ef.prefix, resource)
	if err != nil {
		r.add(checkWarn, name, err.Error(), "")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	resp, err := etcd.Get(cctx, prefix, clientv3.WithPrefix(), clientv3.WithLimit(d.sample))
	if err != nil {
		r.add(checkFail, name, "read etcd: "+err.Error(), "")
		return
	}
	names := map[string]int{}
	plain, underWriter := 0, 0
	for _, kv := range resp.Kvs {
		c := verify.Classify(kv.Value)
		switch c.Type {
		case verify.KMSv2, verify.KMSv1:
			names[c.Provider]++
			if c.Provider == writer {
				underWriter++
			}
		case verify.Identity:
			plain++
		}
	}
	var unknown []string
	for n, count := range names {
		if !configured[n] {
			unknown = append(unknown, fmt.Sprintf("%s (%d)", n, count))
		}
	}
	sort.Strings(unknown)
	switch {
	case len(resp.Kvs) == 0:
		r.add(checkPass, name, "nothing stored", "")
	case len(unknown) > 0:
		r.add(checkFail, name, fmt.Sprintf("sampled objects carry KMS provider names the configuration does not list for %s: %s", resource, strings.Join(unknown, ", ")),
			"kube-apiserver cannot read them: put that provider back in the EncryptionConfiguration (after the writing one) until kmsctl migrate has rewritten them")
	case plain > 0:
		r.add(checkWarn, name, fmt.Sprintf("%d of %d sampled objects are plaintext", plain, len(resp.Kvs)), "run kmsctl migrate --resources "+resource)
	case underWriter == 0 && writer != "":
		r.add(checkWarn, name, fmt.Sprintf("none of %d sampled objects is under the writing provider %s", len(resp.Kvs), writer), "run kmsctl migrate --resources "+resource)
	default:
		r.add(checkPass, name, fmt.Sprintf("%d sampled objects, all under configured KMS providers", len(resp.Kvs)), "")
	}
}

// checkAPIServer reads kube-apiserver's metrics and checks that the key
// it recorded from its last Status poll of each provider is the key the
// plugin reports now.
func (d *doctorFlags) checkAPIServer(ctx context.Context, r *doctorReport, providers []encryptionconfig.Provider, keyIDs map[string]string) {
	cfg, err := d.kf.restConfig()
	if err != nil {
		r.add(checkFail, "kube-apiserver", err.Error(), "")
		return
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		r.add(checkFail, "kube-apiserver", err.Error(), "")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	body, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(cctx)
	if err != nil {
		r.add(checkFail, "kube-apiserver metrics", fmt.Sprintf("GET %s/metrics: %v", cfg.Host, err), "the kubeconfig's user needs get on the /metrics non-resource URL")
		return
	}
	const series = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{"
	for _, p := range providers {
		want := kms.KeyIDHash(keyIDs[p.Name])
		name := "kube-apiserver key " + p.Name
		if want == "" {
			continue // the provider check already failed
		}
		var hashes []string
		for _, line := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(line, series) && strings.Contains(line, `provider_name="`+p.Name+`"`) {
				if _, rest, ok := strings.Cut(line, `key_id_hash="`); ok {
					h, _, _ := strings.Cut(rest, `"`)
					hashes = append(hashes, h)
				}
			}
		}
		switch {
		case len(hashes) == 0:
			r.add(checkWarn, name, "kube-apiserver has recorded no Status poll of this provider yet", "it polls about once a minute; run again")
		case hashes[len(hashes)-1] == want && len(hashes) == 1:
			r.add(checkPass, name, "kube-apiserver's last Status poll saw the plugin's current key ("+want+")", "")
		case slices.Contains(hashes, want):
			r.add(checkWarn, name, fmt.Sprintf("kube-apiserver recorded %d keys for this provider, the plugin's current one among them", len(hashes)), "normal for a minute or so after a rotation")
		default:
			r.add(checkFail, name, fmt.Sprintf("kube-apiserver recorded %s, the plugin's current key is %s", strings.Join(hashes, ", "), want),
				"kube-apiserver talks to another plugin, or has not polled since a rotation: check its --encryption-provider-config and the socket")
		}
	}
}

func (d *doctorFlags) print(w io.Writer, r *doctorReport) error {
	if d.out.structured() {
		return printData(w, d.out, r)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Result, c.Check, c.Detail)
		if c.Hint != "" && c.Result != checkPass {
			fmt.Fprintf(tw, "\t\thint: %s\n", c.Hint)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d checks: %d failed, %d warnings\n", len(r.Checks), r.Failed, r.Warned)
	return err
}
