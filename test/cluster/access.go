package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Accessors for tests that drive kmsctl's cluster-wide commands (verify,
// migrate, rotate) as an operator would: with a kubeconfig file, etcd's
// connection flags, the plugin's endpoint and the keyring path.

// Kmsctl returns the argv prefix that runs kmsctl.
func (c *Cluster) Kmsctl() []string { return append([]string(nil), c.kmsctl...) }

// Endpoint returns the primary plugin's endpoint as kmsctl sees it.
func (c *Cluster) Endpoint() string { return c.endpoint }

// Keyring returns the primary plugin's keyring file as kmsctl sees it, or
// "" when its provider has none.
func (c *Cluster) Keyring() string { return c.keyring }

// Kubeconfig returns a kubeconfig file that reaches kube-apiserver as a
// member of system:masters: on a local cluster, one written for the test;
// on an existing one, KMS_E2E_KUBECONFIG.
func (c *Cluster) Kubeconfig(t testing.TB) string {
	t.Helper()
	if c.local == nil {
		return os.Getenv(envKubeconfig)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := c.local.writeKubeconfig(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeKubeconfig writes a kubeconfig file that reaches the local
// kube-apiserver as a member of system:masters.
func (l *local) writeKubeconfig(path string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{
		Server:                   "https://127.0.0.1:" + strconv.Itoa(l.apiPort),
		CertificateAuthorityData: l.pki.caPEM,
	}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: l.pki.adminCertPEM,
		ClientKeyData:         l.pki.adminKeyPEM,
	}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "admin"}
	cfg.CurrentContext = "e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// EtcdFlags returns etcdctl-style flags (as kmsctl verify takes them) that
// reach the cluster's etcd.
func (c *Cluster) EtcdFlags() []string {
	if c.local != nil {
		return []string{"--endpoints", c.local.etcdURL, "--etcd-prefix", c.EtcdPrefix}
	}
	flags := []string{"--endpoints", os.Getenv(envEtcdEndpoints), "--etcd-prefix", c.EtcdPrefix}
	for flag, env := range map[string]string{"--cacert": envEtcdCA, "--cert": envEtcdCert, "--key": envEtcdKey} {
		if v := os.Getenv(env); v != "" {
			flags = append(flags, flag, v)
		}
	}
	return flags
}

// EncryptionConfigPath returns the EncryptionConfiguration file a local
// kube-apiserver runs with, or "" on an existing cluster.
func (c *Cluster) EncryptionConfigPath() string {
	if c.local == nil {
		return ""
	}
	return c.local.encConfig
}
