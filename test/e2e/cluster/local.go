package cluster

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// localProviderName is the kms provider's name in a local cluster's
// EncryptionConfiguration.
const localProviderName = "kms-plugin"

// local is a control plane of real processes on loopback.
type local struct {
	dir        string // logs, data, certificates, configuration
	pki        *pki
	etcdURL    string
	apiPort    int
	healthAddr string // the plugin's HTTP health address
	socket     string // the plugin's unix socket
	keyring    string
	encConfig  string
	encryption bool // whether kube-apiserver runs with encConfig

	etcdBin, apiserverBin, pluginBin string

	etcd, apiserver, plugin *process
	client                  kubernetes.Interface // polls kube-apiserver's /readyz
}

func startLocal(t testing.TB, opts Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	l := &local{dir: t.TempDir(), encryption: !opts.Plaintext}
	t.Cleanup(func() { dumpLogsOnFailure(t, l.dir) })

	// A unix socket path must fit in 108 bytes; t.TempDir can be longer.
	sockDir, err := os.MkdirTemp("", "kmse2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	l.socket = filepath.Join(sockDir, "kms.sock")

	l.etcdBin = testbin.Tool(t, "etcd", "etcd")
	l.apiserverBin = testbin.Tool(t, "kube-apiserver", "kube-apiserver")
	l.pluginBin = testbin.Build(t, "./cmd/kms-plugin")
	kmsctl := testbin.Build(t, "./cmd/kmsctl")

	if l.pki, err = newPKI(l.dir); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{
		EtcdPrefix:         "/registry",
		ProviderName:       localProviderName,
		EncryptedResources: []string{"secrets", "configmaps"},
		kmsctl:             []string{kmsctl},
		endpoint:           "unix://" + l.socket,
		keyring:            filepath.Join(l.dir, "keyring.json"),
		local:              l,
	}
	l.keyring = c.keyring
	l.encConfig = filepath.Join(l.dir, "encryption-config.yaml")
	if err := os.WriteFile(l.encConfig, []byte(encryptionConfig(localProviderName, c.endpoint, c.EncryptedResources)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.runKmsctl(ctx, "keyring", "init", "--keyring", c.keyring); err != nil {
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

	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	l.healthAddr = "127.0.0.1:" + strconv.Itoa(port)
	// Registered before startPlugin so that a plugin started later by the
	// test (after KillPlugin) is stopped too.
	t.Cleanup(func() {
		if l.plugin != nil {
			l.plugin.kill()
		}
	})
	if err := l.startPlugin(ctx); err != nil {
		t.Fatal(err)
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
	return c
}

// encryptionConfig renders an EncryptionConfiguration that sends resources
// through the kms provider name at endpoint, with identity second so that
// objects written before encryption was enabled still read.
func encryptionConfig(name, endpoint string, resources []string) string {
	s := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n"
	for _, r := range resources {
		s += "      - " + r + "\n"
	}
	s += fmt.Sprintf(`    providers:
      - kms:
          apiVersion: v2
          name: %s
          endpoint: %s
          timeout: 3s
      - identity: {}
`, name, endpoint)
	return s
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

func (l *local) pluginArgs() []string {
	return []string{
		"--provider", "local",
		"--keyring", l.keyring,
		"--listen", "unix://" + l.socket,
		"--health-addr", l.healthAddr,
		"--keyring-reload-interval", "1s",
		"--log-format", "text",
	}
}

func (l *local) startPlugin(ctx context.Context) error {
	if l.plugin != nil {
		if ok, _ := l.plugin.exited(); !ok {
			return fmt.Errorf("start kms-plugin: already running")
		}
	}
	var err error
	l.plugin, err = startProcess("kms-plugin", filepath.Join(l.dir, "kms-plugin.log"), l.pluginBin, l.pluginArgs()...)
	if err != nil {
		return err
	}
	return waitHTTP(ctx, l.plugin, "http://"+l.healthAddr+"/readyz", time.Minute)
}

func (l *local) killPlugin() error {
	if l.plugin == nil {
		return fmt.Errorf("kill kms-plugin: not started")
	}
	if ok, err := l.plugin.exited(); ok {
		return fmt.Errorf("kill kms-plugin: it had already exited: %v", err)
	}
	l.plugin.kill()
	return nil
}

func (l *local) startAPIServer(ctx context.Context) error {
	args := []string{
		"--etcd-servers", l.etcdURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(l.apiPort),
		"--cert-dir", filepath.Join(l.dir, "apiserver-certs"),
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
	if l.encryption {
		args = append(args, "--encryption-provider-config", l.encConfig)
	}
	var err error
	l.apiserver, err = startProcess("kube-apiserver", filepath.Join(l.dir, "kube-apiserver.log"), l.apiserverBin, args...)
	if err != nil {
		return err
	}
	return Poll(ctx, 500*time.Millisecond, 3*time.Minute, "kube-apiserver /readyz", func(ctx context.Context) (bool, error) {
		if ok, err := l.apiserver.exited(); ok {
			return false, Permanent(fmt.Errorf("kube-apiserver exited: %v\n%s", err, tail(l.apiserver.log, 20)))
		}
		_, err := l.client.CoreV1().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil, err
	})
}

func (l *local) restartAPIServer(ctx context.Context) error {
	l.apiserver.stop()
	return l.startAPIServer(ctx)
}

// waitHTTP polls url until it answers 200, failing early if p exits.
func waitHTTP(ctx context.Context, p *process, url string, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
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
