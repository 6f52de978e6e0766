package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	"k8s.io/client-go/kubernetes"

	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// Cluster is a running control plane with kms-plugin wired in as a KMS v2
// provider.
type Cluster struct {
	// Client talks to kube-apiserver as a member of system:masters.
	Client kubernetes.Interface
	// Etcd reads the raw values kube-apiserver stored.
	Etcd *clientv3.Client
	// EtcdPrefix is kube-apiserver's --etcd-prefix (normally /registry).
	EtcdPrefix string
	// ProviderName is the name of the first kms provider in the
	// EncryptionConfiguration: the primary plugin, which encrypts new
	// writes. Status, KeyID, Rotate, Prefix, Encrypted, StoredKeyID,
	// KillPlugin and StartPlugin act on it; Plugin(name) reaches the
	// others. UseEncryptionConfig may change it.
	ProviderName string
	// EncryptedResources lists the resources the EncryptionConfiguration
	// sends through the primary plugin, such as "secrets" and "configmaps".
	EncryptedResources []string

	kmsctl   []string // argv that runs kmsctl
	endpoint string   // the primary plugin's endpoint, as kmsctl sees it
	keyring  string   // the primary plugin's keyring file, as kmsctl sees it; empty if it has none

	pluginsOnce sync.Once
	plugins     []*Plugin // every plugin the cluster runs, in Options.Plugins order

	local    *local    // set when the cluster runs on loopback
	existing *existing // set when KMS_E2E_KUBECONFIG names a cluster
}

// Start returns the cluster the tests run against: an existing one when
// KMS_E2E_KUBECONFIG is set, else a new local control plane that lives until
// t ends.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if useExisting() {
		return startExisting(t)
	}
	return startLocal(t, opts)
}

// UsesExistingCluster reports whether Start returns an existing cluster
// (KMS_E2E_KUBECONFIG is set) rather than starting a local one. Tests that
// need a backend the existing cluster does not run check it first.
func UsesExistingCluster() bool { return useExisting() }

// Options shape a local cluster. An existing cluster ignores them.
type Options struct {
	// Plaintext starts kube-apiserver without --encryption-provider-config,
	// as a cluster is before encryption at rest is enabled. EnableEncryption
	// switches it on later.
	Plaintext bool
	// Plugins are the kms-plugin processes the cluster runs, each on its
	// own socket. Empty means one plugin, "kms-plugin" on kms.sock, on a new
	// local keyring (LocalPlugin).
	Plugins []PluginSpec
	// EncryptionConfig is an EncryptionConfiguration sample that
	// kube-apiserver runs with, as a path relative to the repository root
	// (such as "deploy/encryption-config/vault.yaml"). Its endpoints under
	// unix:///var/run/kms-plugin/ are moved to the cluster's socket
	// directory, so each must name the socket of a plugin in Plugins with
	// the provider name of that plugin. Empty means a configuration that
	// lists every plugin in order, then identity, for secrets and
	// configmaps.
	EncryptionConfig string
	// Controllers, when set, starts kube-controller-manager once
	// kube-apiserver is ready, running only these controllers (its
	// --controllers), as an admin client, without leader election. The
	// storage version migrator needs "storage-version-migrator-controller"
	// and "garbage-collector-controller": it migrates from the garbage
	// collector's informers and panics without them. Empty runs no
	// controller manager, so nothing acts on a StorageVersionMigration.
	Controllers []string
}

// Local reports whether the cluster runs on loopback under the test's
// control, rather than being an existing cluster.
func (c *Cluster) Local() bool { return c.local != nil }

// Status is the plugin's KMS v2 Status reply as `kmsctl status -o json`
// prints it.
type Status struct {
	Version string `json:"version"`
	Healthz string `json:"healthz"`
	KeyID   string `json:"key_id"`
}

// Status asks the primary plugin for its Status through kmsctl.
func (c *Cluster) Status(ctx context.Context) (Status, error) { return c.primary().Status(ctx) }

// KeyID returns the primary plugin's current key_id, failing unless it
// reports version v2 and healthz ok.
func (c *Cluster) KeyID(ctx context.Context) (string, error) { return c.primary().KeyID(ctx) }

// Rotate makes a new key current in the primary plugin's backend (for the
// local provider, `kmsctl keyring rotate`), waits until the running plugin's
// Status reports it, and returns the new key_id.
func (c *Cluster) Rotate(ctx context.Context) (string, error) { return c.primary().Rotate(ctx) }

// Plugin is one kms-plugin the cluster runs, listed or not in the current
// EncryptionConfiguration.
type Plugin struct {
	// Name is the plugin's kms provider name in the EncryptionConfiguration;
	// it is part of the prefix of every value the plugin encrypted.
	Name string

	c        *Cluster
	endpoint string                                    // as kmsctl sees it
	rotate   func(ctx context.Context) (string, error) // nil if the plugin cannot rotate
	local    *localPlugin                              // nil on an existing cluster
}

// Plugins returns every plugin the cluster runs, in Options.Plugins order.
// An existing cluster has one, described by KMS_E2E_* variables.
func (c *Cluster) Plugins() []*Plugin {
	c.pluginsOnce.Do(func() {
		if c.plugins == nil {
			c.plugins = []*Plugin{{Name: c.ProviderName, c: c, endpoint: c.endpoint, rotate: keyringRotate(c.kmsctl, c.keyring)}}
		}
	})
	return c.plugins
}

// Plugin returns the plugin whose provider name is name, or nil.
func (c *Cluster) Plugin(name string) *Plugin {
	for _, p := range c.Plugins() {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// primary is the plugin named ProviderName: the first kms provider in the
// EncryptionConfiguration, the one that encrypts new writes.
func (c *Cluster) primary() *Plugin {
	if p := c.Plugin(c.ProviderName); p != nil {
		return p
	}
	// Unreachable: Start and UseEncryptionConfig only name running plugins.
	panic(fmt.Sprintf("cluster: no plugin named %q", c.ProviderName))
}

// Status asks the plugin for its Status through kmsctl.
func (p *Plugin) Status(ctx context.Context) (Status, error) {
	out, err := runKmsctl(ctx, p.c.kmsctl, "status", "--endpoint", p.endpoint, "-o", "json")
	if err != nil {
		return Status{}, err
	}
	var s Status
	if err := json.Unmarshal(out, &s); err != nil {
		return Status{}, fmt.Errorf("parse kmsctl status output %q: %w", out, err)
	}
	return s, nil
}

// KeyID returns the plugin's current key_id, failing unless the plugin
// reports version v2 and healthz ok.
func (p *Plugin) KeyID(ctx context.Context) (string, error) {
	s, err := p.Status(ctx)
	if err != nil {
		return "", err
	}
	if s.Version != "v2" || s.Healthz != "ok" || s.KeyID == "" {
		return "", fmt.Errorf("plugin %s status = %+v, want version v2, healthz ok and a key_id", p.Name, s)
	}
	return s.KeyID, nil
}

// Rotate runs the plugin's rotate function (PluginSpec.Rotate), waits until
// the running plugin's Status reports a new key_id, and returns it. It fails
// if the rotate function printed another key_id than the plugin reports.
func (p *Plugin) Rotate(ctx context.Context) (string, error) {
	if p.rotate == nil {
		return "", fmt.Errorf("rotate %s: the plugin has no rotate function", p.Name)
	}
	before, err := p.KeyID(ctx)
	if err != nil {
		return "", fmt.Errorf("rotate: %w", err)
	}
	printed, err := p.rotate(ctx)
	if err != nil {
		return "", err
	}
	var now string
	err = Poll(ctx, 200*time.Millisecond, time.Minute, "plugin "+p.Name+" reports the rotated key", func(ctx context.Context) (bool, error) {
		id, err := p.KeyID(ctx)
		if err != nil {
			return false, err
		}
		now = id
		return id != before, nil
	})
	if err != nil {
		return "", err
	}
	if printed != "" && printed != now {
		return "", fmt.Errorf("rotating %s printed key_id %q, but the plugin's Status key_id is %q", p.Name, printed, now)
	}
	return now, nil
}

// keyringRotate rotates a local keyring with `kmsctl keyring rotate`, which
// prints the new key_id on its last line.
func keyringRotate(kmsctl []string, keyring string) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		if keyring == "" {
			return "", errors.New("rotate: this cluster's provider has no keyring file (set KMS_E2E_KEYRING)")
		}
		out, err := runKmsctl(ctx, kmsctl, "keyring", "rotate", "--keyring", keyring)
		if err != nil {
			return "", err
		}
		return lastLine(out), nil
	}
}

// Prefix is what kube-apiserver writes before every value this plugin
// encrypted.
func (p *Plugin) Prefix() string { return "k8s:enc:kms:v2:" + p.Name + ":" }

// Encrypted parses a raw etcd value as the KMS v2 EncryptedObject that
// kube-apiserver stores, failing if it lacks this plugin's provider prefix.
func (p *Plugin) Encrypted(raw []byte) (*kmstypes.EncryptedObject, error) {
	rest, ok := bytes.CutPrefix(raw, []byte(p.Prefix()))
	if !ok {
		return nil, fmt.Errorf("value starts with %q, want prefix %q", head(raw), p.Prefix())
	}
	var obj kmstypes.EncryptedObject
	if err := proto.Unmarshal(rest, &obj); err != nil {
		return nil, fmt.Errorf("parse EncryptedObject: %w", err)
	}
	return &obj, nil
}

// Kill SIGKILLs the plugin.
func (p *Plugin) Kill(ctx context.Context) error {
	if p.local != nil {
		return p.local.kill()
	}
	return p.c.existing.killPlugin(ctx)
}

// Start starts the plugin after Kill (on an existing cluster the kubelet
// restarts it) and waits until it answers Status healthy.
func (p *Plugin) Start(ctx context.Context) error {
	if p.local != nil {
		if err := p.local.start(ctx); err != nil {
			return err
		}
	}
	return Poll(ctx, 500*time.Millisecond, 3*time.Minute, "plugin "+p.Name+" answers Status", func(ctx context.Context) (bool, error) {
		_, err := p.KeyID(ctx)
		return err == nil, err
	})
}

// runKmsctl runs kmsctl (the argv prefix kmsctl) with args and returns its
// standard output.
func runKmsctl(ctx context.Context, kmsctl []string, args ...string) ([]byte, error) {
	r := testbin.Command(ctx, kmsctl, args...)
	if r.Err != nil {
		return nil, fmt.Errorf("kmsctl %s: %w: %s", strings.Join(args, " "), r.Err, strings.TrimSpace(r.Stderr))
	}
	return []byte(r.Stdout), nil
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// Raw returns the value kube-apiserver stored in etcd for an object of
// resource (such as "secrets") in namespace ns.
func (c *Cluster) Raw(ctx context.Context, resource, ns, name string) ([]byte, error) {
	key := strings.TrimSuffix(c.EtcdPrefix, "/") + "/" + resource + "/" + ns + "/" + name
	resp, err := c.Etcd.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("etcd get %s: %w", key, err)
	}
	if len(resp.Kvs) != 1 {
		return nil, fmt.Errorf("etcd get %s: %d values, want 1", key, len(resp.Kvs))
	}
	return resp.Kvs[0].Value, nil
}

// Prefix is what kube-apiserver writes before every value that the primary
// plugin encrypted.
func (c *Cluster) Prefix() string { return c.primary().Prefix() }

// Encrypted parses a raw etcd value as the KMS v2 EncryptedObject that
// kube-apiserver stores, failing if it lacks the primary plugin's provider
// prefix.
func (c *Cluster) Encrypted(raw []byte) (*kmstypes.EncryptedObject, error) {
	return c.primary().Encrypted(raw)
}

// StoredKeyID returns the keyID stored with a Secret in etcd.
func (c *Cluster) StoredKeyID(ctx context.Context, ns, name string) (string, error) {
	raw, err := c.Raw(ctx, "secrets", ns, name)
	if err != nil {
		return "", err
	}
	obj, err := c.Encrypted(raw)
	if err != nil {
		return "", fmt.Errorf("secret %s/%s: %w", ns, name, err)
	}
	return obj.KeyID, nil
}

func head(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

// Metrics scrapes kube-apiserver's /metrics.
func (c *Cluster) Metrics(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	b, err := c.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("get /metrics: %w", err)
	}
	return parseMetrics(b)
}

// Metrics scrapes the plugin's /metrics on its health address. Only a
// plugin that the test started has one it knows.
func (p *Plugin) Metrics(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	if p.local == nil {
		return nil, fmt.Errorf("plugin %s: its health address is unknown on an existing cluster", p.Name)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.local.healthAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: get /metrics: %w", p.Name, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("plugin %s: get /metrics: %s %w", p.Name, resp.Status, err)
	}
	return parseMetrics(b)
}

func parseMetrics(b []byte) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parse /metrics: %w", err)
	}
	return mfs, nil
}

// ProbeKMS asks kube-apiserver for /healthz/kms-providers. kube-apiserver
// answers from a cache for 20 s after a successful Status call (3 s after a
// failed one); past that, this request makes it call Status at once and,
// if the key_id changed, generate a new DEK seed. Polling it is how a test
// makes the apiserver notice a rotation sooner than its 60 s poll.
func (c *Cluster) ProbeKMS(ctx context.Context) error {
	_, err := c.Client.CoreV1().RESTClient().Get().AbsPath("/healthz/kms-providers").DoRaw(ctx)
	return err
}

// Readyz asks kube-apiserver for /readyz.
func (c *Cluster) Readyz(ctx context.Context) error {
	_, err := c.Client.CoreV1().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	return err
}

// Namespace creates a namespace with a random name for one test and deletes
// it when the test ends.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "kms-e2e-" + hex.EncodeToString(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	// Right after /readyz a new apiserver may still refuse writes for a
	// moment; retry briefly.
	err := Poll(ctx, 500*time.Millisecond, time.Minute, "create namespace "+name, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		return err == nil, err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return name
}

// KillPlugin SIGKILLs the primary plugin.
func (c *Cluster) KillPlugin(ctx context.Context) error { return c.primary().Kill(ctx) }

// StartPlugin starts the primary plugin after KillPlugin (on an existing
// cluster the kubelet restarts it) and waits until it answers Status
// healthy.
func (c *Cluster) StartPlugin(ctx context.Context) error { return c.primary().Start(ctx) }

// RestartAPIServer restarts kube-apiserver and waits until it is ready.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	if c.local != nil {
		return c.local.restartAPIServer(ctx)
	}
	return c.existing.restartAPIServer(ctx, c)
}

// EnableEncryption restarts a local kube-apiserver started with
// Options.Plaintext with the EncryptionConfiguration of Options (by default
// kms-plugin first and identity second, so that plaintext objects still
// read).
func (c *Cluster) EnableEncryption(ctx context.Context) error {
	if c.local == nil {
		return errors.New("enable encryption: only a local cluster can be reconfigured")
	}
	c.local.encryption = true
	return c.local.restartAPIServer(ctx)
}

// MetricValue returns the value of the first sample of metric family name
// whose labels include all of want (a histogram's sample count), and
// whether there is one.
func MetricValue(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		if hasLabels(m, want) {
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}
