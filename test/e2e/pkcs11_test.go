//go:build e2e && pkcs11

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/pkcs11/softhsmtest"
	"github.com/kms-plugin/kms-plugin/test/cluster"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// The PKCS#11 backend as deploy/encryption-config/pkcs11.yaml sets it up.
const (
	pkcs11ProviderName = "kms-plugin-pkcs11"
	pkcs11Socket       = "pkcs11.sock"
	pkcs11KeyLabel     = "kms-plugin"
)

// TestPKCS11 runs kms-plugin --provider pkcs11 (built with -tags pkcs11)
// on a SoftHSM token under a real etcd and kube-apiserver: Secrets are
// encrypted at rest under the token's key; `kmsctl pkcs11 rotate` reaches
// kube-apiserver without a plugin restart; and `kmsctl rotate --backend
// pkcs11 --retire` rotates, migrates every Secret, verifies etcd and
// retires the old versions on the token, after which every Secret reads.
func TestPKCS11(t *testing.T) {
	if cluster.UsesExistingCluster() {
		t.Skip("needs a local cluster: it runs kms-plugin on a SoftHSM token the test creates")
	}
	tk := softhsmtest.New(t, "kms-e2e")
	flags := tk.PluginArgs(pkcs11KeyLabel)
	kmsctl := testbin.Build(t, "./cmd/kmsctl")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if r := testbin.Command(ctx, []string{kmsctl}, append([]string{"pkcs11", "rotate"}, flags...)...); r.Err != nil {
		t.Fatalf("kmsctl pkcs11 rotate: %s", r)
	}
	rotate := func(ctx context.Context) (string, error) {
		r := testbin.Command(ctx, []string{kmsctl}, append([]string{"pkcs11", "rotate"}, flags...)...)
		if r.Err != nil {
			return "", fmt.Errorf("kmsctl pkcs11 rotate: %s", r)
		}
		m := rotatedKeyID.FindStringSubmatch(r.Stdout)
		if m == nil {
			return "", fmt.Errorf("kmsctl pkcs11 rotate printed %q, want a new key_id", r.Stdout)
		}
		return m[1], nil
	}
	c := cluster.Start(t, cluster.Options{
		Plugins: []cluster.PluginSpec{{
			Name:   pkcs11ProviderName,
			Socket: pkcs11Socket,
			Args:   append([]string{"--provider", "pkcs11", "--pkcs11-refresh-interval", "1s"}, flags...),
			Rotate: rotate,
		}},
		EncryptionConfig: "deploy/encryption-config/pkcs11.yaml",
	})
	if c.ProviderName != pkcs11ProviderName {
		t.Fatalf("ProviderName = %q, want %q from deploy/encryption-config/pkcs11.yaml", c.ProviderName, pkcs11ProviderName)
	}

	t.Run("EncryptionAtRest", func(t *testing.T) {
		keyID, err := c.KeyID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := "pkcs11:" + tk.Label + "/" + pkcs11KeyLabel + ":v1:"; !strings.HasPrefix(keyID, want) {
			t.Fatalf("plugin Status key_id = %q, want prefix %q", keyID, want)
		}
		raw, obj := checkSecretAtRest(ctx, t, c, c.Namespace(t), keyID)
		t.Logf("secret at rest: %d raw bytes, keyID %q", len(raw), obj.KeyID)
	})
	t.Run("Rotation", func(t *testing.T) {
		checkRotation(ctx, t, c, c.Namespace(t), c.Rotate)
	})
	t.Run("RotateCommand", func(t *testing.T) {
		e := &rotationEnv{c: c, kubeconfig: c.Kubeconfig(t), count: 200}
		e.ns = c.Namespace(t)
		createBulkSecrets(ctx, t, c, e.ns, e.count)
		oldKey, err := c.KeyID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		args := append([]string{"rotate", "--backend", "pkcs11",
			"--plugin-endpoint", c.Endpoint(), "--kubeconfig", e.kubeconfig, "--resources", "secrets",
			"--state-dir", filepath.Join(t.TempDir(), "rotate"), "--poll-interval", "1s", "--apiserver-timeout", "3m", "--retire"},
			flags...)
		r := e.mustKmsctl(ctx, t, append(args, c.EtcdFlags()...)...)
		t.Logf("kmsctl rotate --backend pkcs11 --retire:\n%s", r.Stdout)
		newKey, err := c.KeyID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if newKey == oldKey {
			t.Fatalf("after kmsctl rotate the plugin still reports %s", oldKey)
		}
		if v, ok := e.verify(ctx, t, "--expect-key-id", newKey); !ok || v.Total < int64(e.count) {
			t.Errorf("verify --expect-key-id %s: exit 0 = %v, %d offenders of %d", newKey, ok, v.OffenderCount, v.Total)
		}
		// On the token: the new version is current, every other retired.
		kr := e.mustKmsctl(ctx, t, append([]string{"pkcs11", "keys", "-o", "json"}, flags...)...)
		var st struct {
			Versions []providers.KeyInfo `json:"versions"`
		}
		if err := json.Unmarshal([]byte(kr.Stdout), &st); err != nil {
			t.Fatalf("kmsctl pkcs11 keys -o json: %v\n%s", err, kr.Stdout)
		}
		for _, v := range st.Versions {
			if want := map[bool]providers.KeyState{true: providers.StatePrimary, false: providers.StateRetired}[v.KeyID == newKey]; v.State != want {
				t.Errorf("after rotate --retire, %s is %s, want %s", v.KeyID, v.State, want)
			}
		}
		for _, i := range []int{0, e.count - 1} {
			checkSecretReads(ctx, t, c, e.ns, secretName(i), []byte("v-"+secretName(i)))
		}
	})
}
