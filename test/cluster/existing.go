package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The environment variables that point the tests at an existing cluster.
// docs/kind.md describes them; deploy/kind/e2e.sh sets them for kind.
const (
	envKubeconfig      = "KMS_E2E_KUBECONFIG"          // selects existing-cluster mode
	envEtcdEndpoints   = "KMS_E2E_ETCD_ENDPOINTS"      // comma-separated
	envEtcdCA          = "KMS_E2E_ETCD_CA"             // PEM CA of etcd's serving certificate
	envEtcdCert        = "KMS_E2E_ETCD_CERT"           // PEM client certificate
	envEtcdKey         = "KMS_E2E_ETCD_KEY"            // PEM client key
	envEtcdPrefix      = "KMS_E2E_ETCD_PREFIX"         // default /registry
	envProviderName    = "KMS_E2E_PROVIDER_NAME"       // default kms-plugin
	envResources       = "KMS_E2E_ENCRYPTED_RESOURCES" // default secrets
	envKmsctl          = "KMS_E2E_KMSCTL"              // argv prefix, default kmsctl
	envEndpoint        = "KMS_E2E_PLUGIN_ENDPOINT"     // default unix:///var/run/kms-plugin/kms.sock
	envKeyring         = "KMS_E2E_KEYRING"             // keyring path as kmsctl sees it
	envKillPlugin      = "KMS_E2E_KILL_PLUGIN"         // sh -c command that SIGKILLs the plugin
	envRestartAPIServe = "KMS_E2E_RESTART_APISERVER"   // sh -c command that restarts kube-apiserver
)

func useExisting() bool { return os.Getenv(envKubeconfig) != "" }

// existing is a cluster the tests did not start, such as kind.
type existing struct {
	killCmd, restartCmd string
}

func getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func startExisting(t testing.TB) *Cluster {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv(envKubeconfig))
	if err != nil {
		t.Fatalf("%s: %v", envKubeconfig, err)
	}
	cfg.QPS, cfg.Burst, cfg.Timeout = 200, 400, 30*time.Second
	c := &Cluster{
		EtcdPrefix:         getenv(envEtcdPrefix, "/registry"),
		ProviderName:       getenv(envProviderName, "kms-plugin"),
		EncryptedResources: strings.Split(getenv(envResources, "secrets"), ","),
		kmsctl:             strings.Fields(getenv(envKmsctl, "kmsctl")),
		endpoint:           getenv(envEndpoint, "unix:///var/run/kms-plugin/kms.sock"),
		keyring:            os.Getenv(envKeyring),
		existing: &existing{
			killCmd:    os.Getenv(envKillPlugin),
			restartCmd: os.Getenv(envRestartAPIServe),
		},
	}
	if c.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatalf("kubernetes client: %v", err)
	}

	endpoints := os.Getenv(envEtcdEndpoints)
	if endpoints == "" {
		t.Fatalf("%s is set but %s is not: the tests read raw values from etcd", envKubeconfig, envEtcdEndpoints)
	}
	etcdCfg := clientv3.Config{Endpoints: strings.Split(endpoints, ","), DialTimeout: 10 * time.Second, Logger: zap.NewNop()}
	if os.Getenv(envEtcdCert) != "" || os.Getenv(envEtcdCA) != "" {
		tlsInfo := transport.TLSInfo{
			CertFile:      os.Getenv(envEtcdCert),
			KeyFile:       os.Getenv(envEtcdKey),
			TrustedCAFile: os.Getenv(envEtcdCA),
		}
		if etcdCfg.TLS, err = tlsInfo.ClientConfig(); err != nil {
			t.Fatalf("etcd TLS: %v", err)
		}
	}
	if c.Etcd, err = clientv3.New(etcdCfg); err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { c.Etcd.Close() })
	return c
}

// CanKillPlugin reports whether KillPlugin works on this cluster.
func (c *Cluster) CanKillPlugin() bool { return c.local != nil || c.existing.killCmd != "" }

// CanRestartAPIServer reports whether RestartAPIServer works on this cluster.
func (c *Cluster) CanRestartAPIServer() bool { return c.local != nil || c.existing.restartCmd != "" }

func (e *existing) killPlugin(ctx context.Context) error {
	if e.killCmd == "" {
		return fmt.Errorf("kill plugin: %s is not set", envKillPlugin)
	}
	return sh(ctx, e.killCmd)
}

// restartAPIServer runs the restart command, then waits until a
// kube-apiserver process that started after it answers /readyz: its
// process_start_time_seconds tells a new process from the old one.
func (e *existing) restartAPIServer(ctx context.Context, c *Cluster) error {
	if e.restartCmd == "" {
		return fmt.Errorf("restart kube-apiserver: %s is not set", envRestartAPIServe)
	}
	before, err := startTime(ctx, c)
	if err != nil {
		return err
	}
	if err := sh(ctx, e.restartCmd); err != nil {
		return err
	}
	return Poll(ctx, time.Second, 5*time.Minute, "restarted kube-apiserver is ready", func(ctx context.Context) (bool, error) {
		now, err := startTime(ctx, c)
		if err != nil {
			return false, err
		}
		if now == before {
			return false, fmt.Errorf("kube-apiserver still has process_start_time_seconds %v", now)
		}
		err = c.Readyz(ctx)
		return err == nil, err
	})
}

func startTime(ctx context.Context, c *Cluster) (float64, error) {
	mfs, err := c.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := MetricValue(mfs, "process_start_time_seconds", nil)
	if !ok {
		return 0, fmt.Errorf("kube-apiserver /metrics lacks process_start_time_seconds")
	}
	return v, nil
}

func sh(ctx context.Context, script string) error {
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("sh -c %q: %w: %s", script, err, strings.TrimSpace(out.String()))
	}
	return nil
}
