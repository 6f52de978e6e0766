package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
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
	// ProviderName is the kms provider's name in the EncryptionConfiguration.
	ProviderName string
	// EncryptedResources lists the resources the EncryptionConfiguration
	// sends through the plugin, such as "secrets" and "configmaps".
	EncryptedResources []string

	kmsctl   []string // argv that runs kmsctl
	endpoint string   // the plugin's endpoint, as kmsctl sees it
	keyring  string   // the keyring file, as kmsctl sees it; empty if the provider has none

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

// Options shape a local cluster. An existing cluster ignores them.
type Options struct {
	// Plaintext starts kube-apiserver without --encryption-provider-config,
	// as a cluster is before encryption at rest is enabled. EnableEncryption
	// switches it on later.
	Plaintext bool
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

// Status asks the plugin for its Status through kmsctl.
func (c *Cluster) Status(ctx context.Context) (Status, error) {
	out, err := c.runKmsctl(ctx, "status", "--endpoint", c.endpoint, "-o", "json")
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
func (c *Cluster) KeyID(ctx context.Context) (string, error) {
	s, err := c.Status(ctx)
	if err != nil {
		return "", err
	}
	if s.Version != "v2" || s.Healthz != "ok" || s.KeyID == "" {
		return "", fmt.Errorf("plugin status = %+v, want version v2, healthz ok and a key_id", s)
	}
	return s.KeyID, nil
}

// Rotate adds a key version with `kmsctl keyring rotate`, waits until the
// running plugin's Status reports it, and returns the new key_id.
func (c *Cluster) Rotate(ctx context.Context) (string, error) {
	if c.keyring == "" {
		return "", errors.New("rotate: this cluster's provider has no keyring file (set KMS_E2E_KEYRING)")
	}
	before, err := c.KeyID(ctx)
	if err != nil {
		return "", fmt.Errorf("rotate: %w", err)
	}
	out, err := c.runKmsctl(ctx, "keyring", "rotate", "--keyring", c.keyring)
	if err != nil {
		return "", err
	}
	printed := lastLine(out)
	var now string
	err = Poll(ctx, 200*time.Millisecond, 30*time.Second, "plugin reports the rotated key", func(ctx context.Context) (bool, error) {
		id, err := c.KeyID(ctx)
		if err != nil {
			return false, err
		}
		now = id
		return id != before, nil
	})
	if err != nil {
		return "", err
	}
	if printed != now {
		return "", fmt.Errorf("kmsctl keyring rotate printed %q, but the plugin's Status key_id is %q", printed, now)
	}
	return now, nil
}

func (c *Cluster) runKmsctl(ctx context.Context, args ...string) ([]byte, error) {
	argv := append(append([]string{}, c.kmsctl...), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kmsctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
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

// Prefix is what kube-apiserver writes before every value that kms-plugin
// encrypted.
func (c *Cluster) Prefix() string { return "k8s:enc:kms:v2:" + c.ProviderName + ":" }

// Encrypted parses a raw etcd value as the KMS v2 EncryptedObject that
// kube-apiserver stores, failing if it lacks this cluster's provider prefix.
func (c *Cluster) Encrypted(raw []byte) (*kmstypes.EncryptedObject, error) {
	rest, ok := bytes.CutPrefix(raw, []byte(c.Prefix()))
	if !ok {
		return nil, fmt.Errorf("value starts with %q, want prefix %q", head(raw), c.Prefix())
	}
	var obj kmstypes.EncryptedObject
	if err := proto.Unmarshal(rest, &obj); err != nil {
		return nil, fmt.Errorf("parse EncryptedObject: %w", err)
	}
	return &obj, nil
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

// KillPlugin SIGKILLs kms-plugin.
func (c *Cluster) KillPlugin(ctx context.Context) error {
	if c.local != nil {
		return c.local.killPlugin()
	}
	return c.existing.killPlugin(ctx)
}

// StartPlugin starts kms-plugin after KillPlugin (on an existing cluster the
// kubelet restarts it) and waits until it answers Status healthy.
func (c *Cluster) StartPlugin(ctx context.Context) error {
	if c.local != nil {
		if err := c.local.startPlugin(ctx); err != nil {
			return err
		}
	}
	return Poll(ctx, 500*time.Millisecond, 3*time.Minute, "plugin answers Status", func(ctx context.Context) (bool, error) {
		_, err := c.KeyID(ctx)
		return err == nil, err
	})
}

// RestartAPIServer restarts kube-apiserver and waits until it is ready.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	if c.local != nil {
		return c.local.restartAPIServer(ctx)
	}
	return c.existing.restartAPIServer(ctx, c)
}

// EnableEncryption restarts a local kube-apiserver started with
// Options.Plaintext with an EncryptionConfiguration that lists kms-plugin
// first and identity second, so that plaintext objects still read.
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
