//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/test/cluster"
	"github.com/kms-plugin/kms-plugin/test/testbin"
	"github.com/kms-plugin/kms-plugin/test/vaultserver"
)

// The Vault backend as deploy/vault/setup-transit.sh and
// deploy/encryption-config/vault.yaml set it up.
const (
	vaultMount        = "transit"
	vaultKey          = "kms-plugin"
	vaultProviderName = "kms-plugin-vault"
	vaultSocket       = "vault.sock"
)

// TestVault runs checks 1 (encryption at rest), 2 (rotation) and 4
// (kube-apiserver restart) against kms-plugin on the Vault transit
// provider, one after the other on one cluster that runs with
// deploy/encryption-config/vault.yaml.
func TestVault(t *testing.T) {
	if cluster.UsesExistingCluster() {
		t.Skip("needs a local cluster: it runs kms-plugin on a Vault the test starts")
	}
	v := startVault(t)
	c := cluster.Start(t, cluster.Options{
		Plugins:          []cluster.PluginSpec{v.plugin()},
		EncryptionConfig: "deploy/encryption-config/vault.yaml",
	})
	if c.ProviderName != vaultProviderName {
		t.Fatalf("ProviderName = %q, want %q from deploy/encryption-config/vault.yaml", c.ProviderName, vaultProviderName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	t.Run("EncryptionAtRest", func(t *testing.T) {
		checkVaultAtRest(ctx, t, c, v, c.Namespace(t))
	})
	t.Run("Rotation", func(t *testing.T) {
		before := v.encrypts()
		checkRotation(ctx, t, c, c.Namespace(t), c.Rotate)
		if n := v.latestVersion(t); n != 2 {
			t.Errorf("transit key %s/%s has %d versions after one rotation, want 2", vaultMount, vaultKey, n)
		}
		// kube-apiserver wrapped a new DEK seed under the new version.
		after := v.encrypts()
		if after <= before {
			t.Errorf("Vault served %d transit encrypts before the rotation and %d after: kube-apiserver's new DEK seed was not wrapped by Vault", before, after)
		}
		t.Logf("Vault transit encrypts: %d before the rotation, %d after", before, after)
	})
	t.Run("APIServerRestart", func(t *testing.T) {
		before := v.decrypts()
		checkAPIServerRestart(ctx, t, c, c.Namespace(t))
		after := v.decrypts()
		if after <= before {
			t.Fatalf("Vault served %d transit decrypts before the restart and %d after: the restarted kube-apiserver's Decrypts did not reach Vault", before, after)
		}
		t.Logf("Vault transit decrypts: %d before the kube-apiserver restart, %d after", before, after)
	})
}

// checkVaultAtRest is check 1 for the Vault provider: a Secret reads back,
// and in etcd it is an EncryptedObject under the plugin's Status key_id,
// which names a version of the transit key; ConfigMaps, which vault.yaml
// does not list, stay plaintext.
func checkVaultAtRest(ctx context.Context, t *testing.T, c *cluster.Cluster, v *vaultBackend, ns string) {
	keyID, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := "vault:" + vaultMount + "/" + vaultKey + ":v1:"; !strings.HasPrefix(keyID, want) {
		t.Fatalf("plugin Status key_id = %q, want prefix %q", keyID, want)
	}

	raw, obj := checkSecretAtRest(ctx, t, c, ns, keyID)
	t.Logf("secret %s/at-rest: %d raw bytes, keyID %q, %d annotations; Vault transit encrypts %d, decrypts %d",
		ns, len(raw), obj.KeyID, len(obj.Annotations), v.encrypts(), v.decrypts())

	if contains(c.EncryptedResources, "configmaps") {
		t.Fatalf("EncryptedResources = %v, but deploy/encryption-config/vault.yaml lists only secrets", c.EncryptedResources)
	}
	cmValue := secretValue(t)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "not-listed"}, Data: map[string]string{"value": string(cmValue)}}
	if _, err := c.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create configmap: %v", err)
	}
	raw, err = c.Raw(ctx, "configmaps", ns, "not-listed")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("k8s\x00")) {
		t.Errorf("configmap %s/not-listed, which the configuration does not encrypt, starts %q in etcd; want plaintext protobuf", ns, raw[:min(len(raw), 32)])
	}
}

// vaultBackend is a real dev Vault set up as deploy/vault/setup-transit.sh
// does: transit at transit/, an aes256-gcm96 key, and the plugin and
// operator policies from `kmsctl vault policy`. The plugin runs with a token
// that holds only the plugin policy, through a proxy that counts its
// requests; `kmsctl vault rotate` runs with an operator token.
type vaultBackend struct {
	srv           *vaultserver.Server
	proxy         *vaultserver.Proxy
	kmsctl        string
	pluginToken   string // token file
	operatorToken string // token file
}

func startVault(t *testing.T) *vaultBackend {
	t.Helper()
	v := &vaultBackend{
		srv:    vaultserver.Start(t, vaultserver.Options{}),
		kmsctl: testbin.Build(t, "./cmd/kmsctl"),
	}
	v.proxy = vaultserver.NewProxy(t, v.srv.Addr)
	v.srv.EnableTransit(t, vaultMount)
	v.srv.CreateKey(t, vaultMount, vaultKey)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	for _, role := range []struct{ role, policy, file string }{
		{"plugin", "kms-plugin", "plugin-token"},
		{"operator", "kms-plugin-operator", "operator-token"},
	} {
		hcl, err := v.run(ctx, "vault", "policy", "--role", role.role, "--vault-mount", vaultMount, "--vault-key", vaultKey)
		if err != nil {
			t.Fatal(err)
		}
		v.srv.WritePolicy(t, role.policy, string(hcl))
		// A child of the root token that holds only this policy (and
		// Vault's default, which lets it renew and look itself up).
		secret, err := v.srv.Client(t).Auth().Token().Create(&api.TokenCreateRequest{
			Policies:    []string{role.policy},
			TTL:         "1h",
			DisplayName: role.policy,
		})
		if err != nil {
			t.Fatalf("create %s token: %v", role.role, err)
		}
		path := filepath.Join(dir, role.file)
		if err := os.WriteFile(path, []byte(secret.Auth.ClientToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if role.role == "plugin" {
			v.pluginToken = path
		} else {
			v.operatorToken = path
		}
	}
	return v
}

// plugin is the spec of a kms-plugin on this Vault, on the socket and under
// the provider name of deploy/encryption-config/vault.yaml. It re-reads the
// key every second, so that a rotation reaches its Status quickly. Its
// health probe, which round-trips a value through transit, runs at start
// only, so that the transit calls counted at the proxy afterwards are the
// ones kube-apiserver asked for.
func (v *vaultBackend) plugin() cluster.PluginSpec {
	return cluster.PluginSpec{
		Name:   vaultProviderName,
		Socket: vaultSocket,
		Args: []string{
			"--provider", "vault",
			"--vault-addr", v.proxy.URL,
			"--vault-mount", vaultMount,
			"--vault-key", vaultKey,
			"--vault-auth", "token",
			"--vault-token-file", v.pluginToken,
			"--vault-refresh-interval", "1s",
			"--health-interval", "1h",
		},
		Rotate: v.rotate,
	}
}

var rotatedKeyID = regexp.MustCompile(`new key_id (\S+)`)

// rotate runs `kmsctl vault rotate` as the operator and returns the key_id
// it printed.
func (v *vaultBackend) rotate(ctx context.Context) (string, error) {
	out, err := v.run(ctx, "vault", "rotate", "--vault-addr", v.srv.Addr, "--vault-mount", vaultMount, "--vault-key", vaultKey, "--vault-token-file", v.operatorToken)
	if err != nil {
		return "", err
	}
	m := rotatedKeyID.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("kmsctl vault rotate printed %q, want a new key_id", out)
	}
	return string(m[1]), nil
}

// latestVersion returns the transit key's latest version.
func (v *vaultBackend) latestVersion(t *testing.T) int {
	t.Helper()
	s, err := v.srv.Client(t).Logical().Read(vaultMount + "/keys/" + vaultKey)
	if err != nil {
		t.Fatalf("read transit key: %v", err)
	}
	var latest int
	if _, err := fmt.Sscan(fmt.Sprint(s.Data["latest_version"]), &latest); err != nil {
		t.Fatalf("transit key %s/%s latest_version %v: %v", vaultMount, vaultKey, s.Data["latest_version"], err)
	}
	return latest
}

// encrypts and decrypts count the transit calls the plugin made.
func (v *vaultBackend) encrypts() int {
	return v.proxy.Count("/v1/" + vaultMount + "/encrypt/" + vaultKey)
}

func (v *vaultBackend) decrypts() int {
	return v.proxy.Count("/v1/" + vaultMount + "/decrypt/" + vaultKey)
}

// run runs kmsctl without the VAULT_* variables of the caller's shell.
func (v *vaultBackend) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, v.kmsctl, args...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "VAULT_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kmsctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
