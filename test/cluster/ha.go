package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// HA is a control plane laid out like an HA kubeadm one, on loopback: one
// etcd member, and nodes that each run a kube-apiserver and a kms-plugin on
// that node's own copy of one local keyring. Every apiserver's
// EncryptionConfiguration names the same provider, at its own node's
// socket, for secrets.
type HA struct {
	// Etcd reads the raw values the apiservers stored.
	Etcd *clientv3.Client
	// EtcdPrefix is the apiservers' --etcd-prefix.
	EtcdPrefix string
	// ProviderName is the kms provider's name on every node.
	ProviderName string
	// Nodes are the control-plane nodes, "node-0", "node-1", ...
	Nodes []*Node

	l      *local
	kmsctl []string
}

// Node is one control-plane node of an HA cluster.
type Node struct {
	Name string
	// Client talks to this node's kube-apiserver as system:masters.
	Client kubernetes.Interface
	// URL is this node's kube-apiserver.
	URL string
	// Endpoint is this node's kms-plugin, as kmsctl sees it.
	Endpoint string
	// Keyring is this node's copy of the keyring.
	Keyring string

	plugin *localPlugin
}

// StartHA starts an HA control plane of n nodes that lives until t ends.
// The keyring is made once with kmsctl keyring init and copied to every
// node, as docs/keyring.md says; every plugin reloads it every second.
func StartHA(t testing.TB, n int) *HA {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l := &local{dir: t.TempDir(), encryption: true}
	t.Cleanup(func() { dumpLogsOnFailure(t, l.dir) })
	var err error
	if l.sockDir, err = os.MkdirTemp("", "kmsha"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(l.sockDir) })
	l.etcdBin = testbin.Tool(t, "etcd", "etcd")
	l.apiserverBin = testbin.Tool(t, "kube-apiserver", "kube-apiserver")
	pluginBin := testbin.Build(t, "./cmd/kms-plugin")
	h := &HA{EtcdPrefix: "/registry", ProviderName: localProviderName, l: l, kmsctl: []string{testbin.Build(t, "./cmd/kmsctl")}}
	if l.pki, err = newPKI(l.dir); err != nil {
		t.Fatal(err)
	}

	// One keyring, copied to every node.
	var ring []byte
	for i := range n {
		nd := &Node{Name: "node-" + strconv.Itoa(i)}
		dir := filepath.Join(l.dir, nd.Name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		nd.Keyring = filepath.Join(dir, "keyring.json")
		if i == 0 {
			if _, err := runKmsctl(ctx, h.kmsctl, "keyring", "init", "--keyring", nd.Keyring); err != nil {
				t.Fatal(err)
			}
			if ring, err = os.ReadFile(nd.Keyring); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(nd.Keyring, ring, 0o600); err != nil {
			t.Fatal(err)
		}
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		nd.plugin = &localPlugin{
			spec: PluginSpec{Name: nd.Name, Args: []string{
				"--provider", "local", "--keyring", nd.Keyring, "--keyring-reload-interval", "1s",
			}},
			bin:        pluginBin,
			socket:     filepath.Join(l.sockDir, nd.Name+".sock"),
			healthAddr: "127.0.0.1:" + strconv.Itoa(port),
			log:        filepath.Join(l.dir, nd.Name+"-kms-plugin.log"),
		}
		nd.Endpoint = "unix://" + nd.plugin.socket
		h.Nodes = append(h.Nodes, nd)
	}

	if err := l.startEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.etcd.kill() })
	h.Etcd, err = clientv3.New(clientv3.Config{Endpoints: []string{l.etcdURL}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { h.Etcd.Close() })

	t.Cleanup(func() {
		for _, nd := range h.Nodes {
			if nd.plugin.proc != nil {
				nd.plugin.proc.kill()
			}
		}
	})
	for _, nd := range h.Nodes {
		if err := nd.plugin.start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range h.Nodes {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		nd.URL = "https://127.0.0.1:" + strconv.Itoa(port)
		if nd.Client, err = kubernetes.NewForConfig(h.restConfig(nd.URL)); err != nil {
			t.Fatal(err)
		}
		encConfig := filepath.Join(l.dir, nd.Name+"-encryption-config.yaml")
		text := encryptionConfig([]*Plugin{{Name: h.ProviderName, endpoint: nd.Endpoint}}, []string{"secrets"})
		if err := os.WriteFile(encConfig, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := l.launchAPIServer(ctx, nd.Name+"-kube-apiserver", port, encConfig, nd.Client)
		if p != nil {
			t.Cleanup(p.kill)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func (h *HA) restConfig(url string) *rest.Config {
	return &rest.Config{
		Host: url,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: h.l.pki.caPEM, CertData: h.l.pki.adminCertPEM, KeyData: h.l.pki.adminKeyPEM,
		},
		QPS: 100, Burst: 200, Timeout: 30 * time.Second,
	}
}

// Kmsctl returns the argv prefix that runs kmsctl.
func (h *HA) Kmsctl() []string { return append([]string(nil), h.kmsctl...) }

// EtcdFlags returns kmsctl's flags that reach the cluster's etcd.
func (h *HA) EtcdFlags() []string {
	return []string{"--endpoints", h.l.etcdURL, "--etcd-prefix", h.EtcdPrefix}
}

// Kubeconfig returns a kubeconfig file for node-0's kube-apiserver as a
// member of system:masters.
func (h *HA) Kubeconfig(t testing.TB) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["ha"] = &clientcmdapi.Cluster{Server: h.Nodes[0].URL, CertificateAuthorityData: h.l.pki.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: h.l.pki.adminCertPEM, ClientKeyData: h.l.pki.adminKeyPEM}
	cfg.Contexts["ha"] = &clientcmdapi.Context{Cluster: "ha", AuthInfo: "admin"}
	cfg.CurrentContext = "ha"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	return path
}

// KillPlugin SIGKILLs the node's kms-plugin.
func (nd *Node) KillPlugin() error { return nd.plugin.kill() }

// StartPlugin starts the node's kms-plugin after KillPlugin, with extra
// flags after its usual ones (a later flag wins), and waits until it is
// ready.
func (nd *Node) StartPlugin(ctx context.Context, extra ...string) error {
	spec := nd.plugin.spec
	spec.Args = append([]string{"--provider", "local", "--keyring", nd.Keyring, "--keyring-reload-interval", "1s"}, extra...)
	nd.plugin.spec = spec
	return nd.plugin.start(ctx)
}

// RestartPlugin kills the node's kms-plugin and starts it again with
// extra flags.
func (nd *Node) RestartPlugin(ctx context.Context, extra ...string) error {
	if err := nd.KillPlugin(); err != nil {
		return fmt.Errorf("restart %s's plugin: %w", nd.Name, err)
	}
	return nd.StartPlugin(ctx, extra...)
}
