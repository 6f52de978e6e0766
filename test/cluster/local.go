package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// localProviderName is the kms provider's name of the plugin a local
// cluster runs when Options.Plugins is empty.
const localProviderName = "kms-plugin"

// sampleSocketDir is the socket directory that the EncryptionConfiguration
// samples in deploy/ name; a local cluster moves it to its own.
const sampleSocketDir = "unix:///var/run/kms-plugin/"

// PluginSpec describes one kms-plugin process of a local cluster.
type PluginSpec struct {
	// Name is the plugin's kms provider name in the EncryptionConfiguration.
	Name string
	// Socket is the file name of the plugin's socket in the cluster's socket
	// directory, as the samples name it under /var/run/kms-plugin/ (such as
	// "kms.sock" or "vault.sock"). Empty means Name + ".sock".
	Socket string
	// Args select and configure the backend ("--provider", "vault",
	// "--vault-addr", ...). The cluster adds --listen, --health-addr and
	// --log-format.
	Args []string
	// Rotate makes a new key current in the plugin's backend and returns
	// the key_id that the rotating tool printed, or "" if it printed none.
	// Plugin.Rotate runs it and waits for the plugin to report the new key.
	Rotate func(ctx context.Context) (string, error)

	keyring string // the local provider's keyring file, if any
}

// LocalPlugin returns the spec of a plugin on the local keyring provider,
// with a new keyring made by `kmsctl keyring init` in a directory that
// lives until t ends, and rotated with `kmsctl keyring rotate`.
func LocalPlugin(t testing.TB, name, socket string) PluginSpec {
	t.Helper()
	kmsctl := []string{testbin.Build(t, "./cmd/kmsctl")}
	keyring := filepath.Join(t.TempDir(), "keyring.json")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := runKmsctl(ctx, kmsctl, "keyring", "init", "--keyring", keyring); err != nil {
		t.Fatal(err)
	}
	return PluginSpec{
		Name:   name,
		Socket: socket,
		Args: []string{
			"--provider", "local",
			"--keyring", keyring,
			"--keyring-reload-interval", "1s",
		},
		Rotate:  keyringRotate(kmsctl, keyring),
		keyring: keyring,
	}
}

// local is a control plane of real processes on loopback.
type local struct {
	dir        string // logs, data, certificates, configuration
	sockDir    string // the plugins' sockets; short, unlike dir
	pki        *pki
	etcdURL    string
	apiPort    int
	encConfig  string
	encryption bool // whether kube-apiserver runs with encConfig

	etcdBin, apiserverBin string

	etcd, apiserver *process
	client          kubernetes.Interface // polls kube-apiserver's /readyz

	// kube-controller-manager, when Options.Controllers is set.
	controllerManagerBin string
	controllerManager    *process
}

// localPlugin is one kms-plugin process of a local cluster.
type localPlugin struct {
	spec       PluginSpec
	bin        string
	socket     string
	healthAddr string // the plugin's HTTP health address
	log        string
	proc       *process
}

func startLocal(t testing.TB, opts Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	l := &local{dir: t.TempDir(), encryption: !opts.Plaintext}
	t.Cleanup(func() { dumpLogsOnFailure(t, l.dir) })

	// A unix socket path must fit in 108 bytes; t.TempDir can be longer.
	var err error
	if l.sockDir, err = os.MkdirTemp("", "kmse2e"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(l.sockDir) })

	l.etcdBin = testbin.Tool(t, "etcd", "etcd")
	l.apiserverBin = testbin.Tool(t, "kube-apiserver", "kube-apiserver")
	if len(opts.Controllers) > 0 {
		l.controllerManagerBin = testbin.Tool(t, "kube-controller-manager", "kube-controller-manager")
	}
	pluginBin := testbin.Build(t, "./cmd/kms-plugin")
	kmsctl := testbin.Build(t, "./cmd/kmsctl")

	if l.pki, err = newPKI(l.dir); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{
		EtcdPrefix: "/registry",
		kmsctl:     []string{kmsctl},
		local:      l,
	}
	specs := opts.Plugins
	if len(specs) == 0 {
		specs = []PluginSpec{LocalPlugin(t, localProviderName, "kms.sock")}
	}
	// Plugins() fills in a plugin only for an existing cluster; this list
	// is built here.
	c.pluginsOnce.Do(func() {})
	sockets := map[string]bool{}
	for _, spec := range specs {
		if spec.Name == "" || strings.Contains(spec.Name, ":") || c.Plugin(spec.Name) != nil {
			t.Fatalf("plugin spec name %q: want a unique name without ':'", spec.Name)
		}
		if spec.Socket == "" {
			spec.Socket = spec.Name + ".sock"
		}
		if sockets[spec.Socket] {
			t.Fatalf("plugin %s: socket %q is taken by another plugin", spec.Name, spec.Socket)
		}
		sockets[spec.Socket] = true
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		lp := &localPlugin{
			spec:       spec,
			bin:        pluginBin,
			socket:     filepath.Join(l.sockDir, spec.Socket),
			healthAddr: "127.0.0.1:" + strconv.Itoa(port),
			log:        filepath.Join(l.dir, spec.Name+".log"),
		}
		c.plugins = append(c.plugins, &Plugin{Name: spec.Name, c: c, endpoint: "unix://" + lp.socket, rotate: spec.Rotate, local: lp})
	}

	l.encConfig = filepath.Join(l.dir, "encryption-config.yaml")
	if err := c.writeEncryptionConfig(opts.EncryptionConfig); err != nil {
		t.Fatal(err)
	}

	if err := l.startEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.etcd.kill() })
	c.Etcd, err = clientv3.New(clientv3.Config{Endpoints: []string{l.etcdURL}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { c.Etcd.Close() })

	// Registered before the plugins start so that a plugin started later by
	// the test (after Kill) is stopped too.
	t.Cleanup(func() {
		for _, p := range c.plugins {
			if p.local.proc != nil {
				p.local.proc.kill()
			}
		}
	})
	for _, p := range c.plugins {
		if err := p.local.start(ctx); err != nil {
			t.Fatal(err)
		}
	}

	if l.apiPort, err = freePort(); err != nil {
		t.Fatal(err)
	}
	c.Client, err = kubernetes.NewForConfig(&rest.Config{
		Host: "https://127.0.0.1:" + strconv.Itoa(l.apiPort),
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   l.pki.caPEM,
			CertData: l.pki.adminCertPEM,
			KeyData:  l.pki.adminKeyPEM,
		},
		QPS:     200,
		Burst:   400,
		Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatalf("kubernetes client: %v", err)
	}
	l.client = c.Client
	t.Cleanup(func() {
		if l.apiserver != nil {
			l.apiserver.kill()
		}
	})
	if err := l.startAPIServer(ctx); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		if l.controllerManager != nil {
			l.controllerManager.kill()
		}
	})
	if len(opts.Controllers) > 0 {
		if err := l.startControllerManager(ctx, opts.Controllers); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// StartControllers starts kube-controller-manager on a running local
// cluster, with only controllers (see Options.Controllers), for a test
// that needs them for part of its run. It stops with the cluster.
func (c *Cluster) StartControllers(ctx context.Context, t testing.TB, controllers ...string) error {
	l := c.local
	if l == nil {
		return errors.New("start kube-controller-manager: only on a local cluster")
	}
	if l.controllerManager != nil {
		return errors.New("start kube-controller-manager: already running")
	}
	l.controllerManagerBin = testbin.Tool(t, "kube-controller-manager", "kube-controller-manager")
	return l.startControllerManager(ctx, controllers)
}

// StopControllers stops the kube-controller-manager that StartControllers
// started. Its watches would otherwise hold every later kube-apiserver
// restart in graceful shutdown for about 30 s.
func (c *Cluster) StopControllers() {
	if l := c.local; l != nil && l.controllerManager != nil {
		l.controllerManager.kill()
		l.controllerManager = nil
	}
}

// UseEncryptionConfig restarts a local kube-apiserver with another
// EncryptionConfiguration sample (see Options.EncryptionConfig; "" is the
// default configuration) and waits until it is ready. ProviderName becomes
// the sample's first kms provider, which then encrypts new writes.
func (c *Cluster) UseEncryptionConfig(ctx context.Context, sample string) error {
	if c.local == nil {
		return errors.New("use encryption config: only a local cluster can be reconfigured")
	}
	if err := c.writeEncryptionConfig(sample); err != nil {
		return err
	}
	c.local.encryption = true
	return c.local.restartAPIServer(ctx)
}

// writeEncryptionConfig writes the local cluster's EncryptionConfiguration
// from sample (a path relative to the repository root), or renders the
// default one when sample is empty, and points ProviderName,
// EncryptedResources and the primary plugin's endpoint and keyring at it.
func (c *Cluster) writeEncryptionConfig(sample string) error {
	var (
		text      string
		primary   string
		resources []string
	)
	if sample == "" {
		primary, resources = c.plugins[0].Name, []string{"secrets", "configmaps"}
		text = encryptionConfig(c.plugins, resources)
	} else {
		b, err := os.ReadFile(filepath.Join(testbin.RepoRoot(), sample))
		if err != nil {
			return fmt.Errorf("read encryption config sample: %w", err)
		}
		text = strings.ReplaceAll(string(b), sampleSocketDir, "unix://"+c.local.sockDir+"/")
		if primary, resources, err = c.checkEncryptionConfig(text); err != nil {
			return fmt.Errorf("encryption config sample %s: %w", sample, err)
		}
	}
	if err := os.WriteFile(c.local.encConfig, []byte(text), 0o600); err != nil {
		return err
	}
	p := c.Plugin(primary)
	c.ProviderName, c.EncryptedResources = primary, resources
	c.endpoint, c.keyring = p.endpoint, p.local.spec.keyring
	return nil
}

// checkEncryptionConfig parses an EncryptionConfiguration and checks that
// every kms provider in it is one of the cluster's plugins, by name and
// socket. It returns the first kms provider's name and the resources that
// provider encrypts.
func (c *Cluster) checkEncryptionConfig(text string) (primary string, resources []string, err error) {
	var cfg apiserverv1.EncryptionConfiguration
	if err := yaml.UnmarshalStrict([]byte(text), &cfg); err != nil {
		return "", nil, fmt.Errorf("parse: %w", err)
	}
	for _, rc := range cfg.Resources {
		for i, pc := range rc.Providers {
			if pc.KMS == nil {
				continue
			}
			p := c.Plugin(pc.KMS.Name)
			if p == nil {
				return "", nil, fmt.Errorf("kms provider %q: the cluster runs no plugin of that name", pc.KMS.Name)
			}
			if pc.KMS.Endpoint != p.endpoint {
				return "", nil, fmt.Errorf("kms provider %q: endpoint %s, but that plugin listens on %s (under %s in the sample)",
					pc.KMS.Name, pc.KMS.Endpoint, p.endpoint, sampleSocketDir)
			}
			if i == 0 {
				if primary != "" && primary != pc.KMS.Name {
					return "", nil, fmt.Errorf("resources encrypted by both %q and %q: the cluster has one primary plugin", primary, pc.KMS.Name)
				}
				primary = pc.KMS.Name
				resources = append(resources, rc.Resources...)
			}
		}
	}
	if primary == "" {
		return "", nil, errors.New("no resource has a kms provider first")
	}
	return primary, resources, nil
}

// encryptionConfig renders an EncryptionConfiguration that sends resources
// through every plugin in order (the first encrypts, the others decrypt),
// with identity last so that objects written before encryption was enabled
// still read.
func encryptionConfig(plugins []*Plugin, resources []string) string {
	s := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n"
	for _, r := range resources {
		s += "      - " + r + "\n"
	}
	s += "    providers:\n"
	for _, p := range plugins {
		s += fmt.Sprintf(`      - kms:
          apiVersion: v2
          name: %s
          endpoint: %s
          timeout: 3s
`, p.Name, p.endpoint)
	}
	return s + "      - identity: {}\n"
}

func (l *local) startEtcd(ctx context.Context) error {
	client, err := freePort()
	if err != nil {
		return err
	}
	peer, err := freePort()
	if err != nil {
		return err
	}
	l.etcdURL = "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	l.etcd, err = startProcess("etcd", filepath.Join(l.dir, "etcd.log"), l.etcdBin,
		"--name", "e2e",
		"--data-dir", filepath.Join(l.dir, "etcd-data"),
		"--listen-client-urls", l.etcdURL,
		"--advertise-client-urls", l.etcdURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "e2e="+peerURL,
		"--log-level", "warn",
		// The tests kill kms-plugin and kube-apiserver, never etcd, so
		// skipping fsync loses nothing they check and spares a shared disk.
		"--unsafe-no-fsync",
	)
	if err != nil {
		return err
	}
	return waitHTTP(ctx, l.etcd, l.etcdURL+"/health", time.Minute)
}

func (lp *localPlugin) args() []string {
	return append(append([]string{}, lp.spec.Args...),
		"--listen", "unix://"+lp.socket,
		"--health-addr", lp.healthAddr,
		"--log-format", "text",
	)
}

func (lp *localPlugin) start(ctx context.Context) error {
	if lp.proc != nil {
		if ok, _ := lp.proc.exited(); !ok {
			return fmt.Errorf("start %s: already running", lp.spec.Name)
		}
	}
	var err error
	lp.proc, err = startProcess(lp.spec.Name, lp.log, lp.bin, lp.args()...)
	if err != nil {
		return err
	}
	return waitHTTP(ctx, lp.proc, "http://"+lp.healthAddr+"/readyz", time.Minute)
}

func (lp *localPlugin) kill() error {
	if lp.proc == nil {
		return fmt.Errorf("kill %s: not started", lp.spec.Name)
	}
	if ok, err := lp.proc.exited(); ok {
		return fmt.Errorf("kill %s: it had already exited: %v", lp.spec.Name, err)
	}
	lp.proc.kill()
	return nil
}

func (l *local) startAPIServer(ctx context.Context) error {
	encConfig := ""
	if l.encryption {
		encConfig = l.encConfig
	}
	var err error
	l.apiserver, err = l.launchAPIServer(ctx, "kube-apiserver", l.apiPort, encConfig, l.client)
	return err
}

// launchAPIServer starts a kube-apiserver on port against the cluster's
// etcd, with encConfig as its EncryptionConfiguration unless it is empty,
// and waits until client sees it ready.
func (l *local) launchAPIServer(ctx context.Context, name string, port int, encConfig string, client kubernetes.Interface) (*process, error) {
	args := []string{
		"--etcd-servers", l.etcdURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(port),
		"--cert-dir", filepath.Join(l.dir, name+"-certs"),
		"--tls-cert-file", l.pki.ServingCert,
		"--tls-private-key-file", l.pki.ServingKey,
		"--client-ca-file", l.pki.CACert,
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", l.pki.SAPub,
		"--service-account-signing-key-file", l.pki.SAKey,
		"--authorization-mode", "RBAC",
		"--service-cluster-ip-range", "10.96.0.0/24",
		"--profiling=false",
		// The loopback advertise address cannot back the kubernetes
		// Service endpoints, and nothing here needs them.
		"--endpoint-reconciler-type", "none",
		"--v", "1",
	}
	if encConfig != "" {
		args = append(args, "--encryption-provider-config", encConfig)
	}
	p, err := startProcess(name, filepath.Join(l.dir, name+".log"), l.apiserverBin, args...)
	if err != nil {
		return nil, err
	}
	return p, Poll(ctx, 500*time.Millisecond, 3*time.Minute, name+" /readyz", func(ctx context.Context) (bool, error) {
		if ok, err := p.exited(); ok {
			return false, Permanent(fmt.Errorf("%s exited: %v\n%s", name, err, tail(p.log, 20)))
		}
		_, err := client.CoreV1().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil, err
	})
}

func (l *local) restartAPIServer(ctx context.Context) error {
	l.apiserver.stop()
	return l.startAPIServer(ctx)
}

// startControllerManager starts kube-controller-manager with only
// controllers, against the cluster's kube-apiserver as a member of
// system:masters, and waits until its /healthz answers. It serves on a
// free loopback port with kube-apiserver's serving certificate, which is
// valid for 127.0.0.1. It follows a restarted kube-apiserver by itself.
func (l *local) startControllerManager(ctx context.Context, controllers []string) error {
	kubeconfig := filepath.Join(l.dir, "kube-controller-manager.kubeconfig")
	if err := l.writeKubeconfig(kubeconfig); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	l.controllerManager, err = startProcess("kube-controller-manager", filepath.Join(l.dir, "kube-controller-manager.log"), l.controllerManagerBin,
		"--kubeconfig", kubeconfig,
		"--controllers", strings.Join(controllers, ","),
		"--leader-elect=false",
		// Every controller acts with the admin's credentials: there is no
		// token controller to mint per-controller service-account tokens.
		"--use-service-account-credentials=false",
		"--bind-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(port),
		"--tls-cert-file", l.pki.ServingCert,
		"--tls-private-key-file", l.pki.ServingKey,
		"--profiling=false",
		// V(2) logs why a StorageVersionMigration is requeued.
		"--v", "2",
	)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(l.pki.caPEM)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	// /healthz is one of the paths kube-controller-manager lets through
	// without authenticating the caller.
	return waitGet(ctx, l.controllerManager, client, "https://127.0.0.1:"+strconv.Itoa(port)+"/healthz", time.Minute)
}

// waitHTTP polls url until it answers 200, failing early if p exits.
func waitHTTP(ctx context.Context, p *process, url string, timeout time.Duration) error {
	return waitGet(ctx, p, &http.Client{Timeout: 2 * time.Second}, url, timeout)
}

// waitGet polls url with client until it answers 200, failing early if p
// exits.
func waitGet(ctx context.Context, p *process, client *http.Client, url string, timeout time.Duration) error {
	return Poll(ctx, 100*time.Millisecond, timeout, p.name+" "+url, func(ctx context.Context) (bool, error) {
		if ok, err := p.exited(); ok {
			return false, Permanent(fmt.Errorf("%s exited: %v\n%s", p.name, err, tail(p.log, 20)))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, Permanent(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("%s: %s", url, resp.Status)
		}
		return true, nil
	})
}
