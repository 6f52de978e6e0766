//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/test/cluster"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// TestEncryptionAtRest checks that Secrets (and ConfigMaps, when the
// EncryptionConfiguration lists them) written through kube-apiserver are
// stored in etcd as kms-plugin envelopes under the plugin's current key.
func TestEncryptionAtRest(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := c.Namespace(t)

	keyID, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}

	raw, obj := checkSecretAtRest(ctx, t, c, ns, keyID)
	t.Logf("secret %s/at-rest: %d raw bytes, keyID %q, %d annotations", ns, len(raw), obj.KeyID, len(obj.Annotations))
	checkKeyIDHashJoins(ctx, t, c, keyID)
	checkDoctor(ctx, t, c)

	if !contains(c.EncryptedResources, "configmaps") {
		t.Logf("the EncryptionConfiguration does not list configmaps; skipping the ConfigMap check")
		return
	}
	cmValue := secretValue(t)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "at-rest"}, Data: map[string]string{"value": string(cmValue)}}
	if _, err := c.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create configmap: %v", err)
	}
	got, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "at-rest", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get configmap: %v", err)
	}
	if !bytes.Equal([]byte(got.Data["value"]), cmValue) {
		t.Fatalf("configmap value = %q, want %q", got.Data["value"], cmValue)
	}
	checkEncrypted(ctx, t, c, "configmaps", ns, "at-rest", cmValue, keyID)
}

// checkKeyIDHashJoins checks that the key_id hash kube-apiserver records
// from its Status polls is the one kms-plugin publishes as
// kms_plugin_current_key_id_hash_info (kms.KeyIDHash), so that the PromQL
// join in docs/operations.md matches.
func checkKeyIDHashJoins(ctx context.Context, t *testing.T, c *cluster.Cluster, keyID string) {
	t.Helper()
	provider := strings.TrimSuffix(strings.TrimPrefix(c.Prefix(), "k8s:enc:kms:v2:"), ":")
	series := "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{"
	var seen []string
	err := cluster.Poll(ctx, time.Second, 2*time.Minute, "kube-apiserver to record the key_id hash of a Status poll", func(ctx context.Context) (bool, error) {
		body, err := c.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
		if err != nil {
			return false, nil
		}
		seen = nil
		for _, line := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(line, series) && strings.Contains(line, `provider_name="`+provider+`"`) {
				seen = append(seen, line)
				if strings.Contains(line, `key_id_hash="`+kms.KeyIDHash(keyID)+`"`) {
					return true, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("%v; the series kube-apiserver has for %s: %q; kms-plugin publishes %s", err, provider, seen, kms.KeyIDHash(keyID))
	}
}

// checkDoctor runs kmsctl doctor against the running control plane, with
// etcd and a kubeconfig, and expects every check to pass: the sockets, the
// plugins' Status, the sampled etcd prefixes and kube-apiserver's record of
// the key.
func checkDoctor(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	if c.EncryptionConfigPath() == "" {
		t.Log("an existing cluster: its EncryptionConfiguration is not on this host; skipping kmsctl doctor")
		return
	}
	args := append([]string{"doctor", "--encryption-config", c.EncryptionConfigPath(), "--kubeconfig", c.Kubeconfig(t), "--interval", "200ms"}, c.EtcdFlags()...)
	r := testbin.Command(ctx, c.Kmsctl(), args...)
	if r.Err != nil {
		t.Fatalf("kmsctl doctor on a healthy control plane: %s", r)
	}
	for _, want := range []string{"PASS  etcd secrets", "PASS  kube-apiserver key ", "0 failed, 0 warnings"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("kmsctl doctor output lacks %q:\n%s", want, r.Stdout)
		}
	}
}

// checkSecretAtRest creates the Secret ns/at-rest, checks that it reads back
// and that etcd holds it as a KMS v2 envelope under keyID with a seed-based
// DEK source, and returns the raw value and the parsed envelope.
func checkSecretAtRest(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, keyID string) ([]byte, *kmstypes.EncryptedObject) {
	t.Helper()
	value := secretValue(t)
	createSecret(ctx, t, c, ns, "at-rest", value)
	checkSecretReads(ctx, t, c, ns, "at-rest", value)
	checkEncrypted(ctx, t, c, "secrets", ns, "at-rest", value, keyID)
	raw, err := c.Raw(ctx, "secrets", ns, "at-rest")
	if err != nil {
		t.Fatal(err)
	}
	obj, err := c.Encrypted(raw)
	if err != nil {
		t.Fatal(err)
	}
	if obj.EncryptedDEKSourceType != kmstypes.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED {
		t.Errorf("encryptedDEKSourceType = %v, want HKDF_SHA256_XNONCE_AES_GCM_SEED", obj.EncryptedDEKSourceType)
	}
	return raw, obj
}
