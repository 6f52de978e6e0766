//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/test/cluster"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// secretValue returns a value that is easy to search for in raw etcd
// bytes and cannot appear there by chance.
func secretValue(t testing.TB) []byte {
	t.Helper()
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return []byte(fmt.Sprintf("kms-e2e-secret-%x", b))
}

func newSecret(name string, value []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Data:       map[string][]byte{"value": value},
	}
}

// createSecret creates a Secret holding value and returns it.
func createSecret(ctx context.Context, t testing.TB, c *cluster.Cluster, ns, name string, value []byte) {
	t.Helper()
	if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, newSecret(name, value), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create secret %s/%s: %v", ns, name, err)
	}
}

// checkSecretReads fails t unless the Secret reads back through the API
// holding value.
func checkSecretReads(ctx context.Context, t testing.TB, c *cluster.Cluster, ns, name string, value []byte) {
	t.Helper()
	got, err := c.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get secret %s/%s: %v", ns, name, err)
	}
	if !bytes.Equal(got.Data["value"], value) {
		t.Fatalf("secret %s/%s value = %q, want %q", ns, name, got.Data["value"], value)
	}
}

// checkEncrypted fails t unless the raw etcd value of the object is
// kms-plugin's envelope under keyID and does not contain value.
func checkEncrypted(ctx context.Context, t testing.TB, c *cluster.Cluster, resource, ns, name string, value []byte, keyID string) {
	t.Helper()
	raw, err := c.Raw(ctx, resource, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, value) {
		t.Fatalf("raw etcd value of %s %s/%s contains the plaintext %q", resource, ns, name, value)
	}
	obj, err := c.Encrypted(raw)
	if err != nil {
		t.Fatalf("%s %s/%s: %v", resource, ns, name, err)
	}
	if obj.KeyID != keyID {
		t.Fatalf("%s %s/%s stored keyID = %q, want the plugin's Status key_id %q", resource, ns, name, obj.KeyID, keyID)
	}
	if len(obj.EncryptedData) == 0 || len(obj.EncryptedDEKSource) == 0 {
		t.Fatalf("%s %s/%s EncryptedObject has empty encryptedData (%d bytes) or encryptedDEKSource (%d bytes)",
			resource, ns, name, len(obj.EncryptedData), len(obj.EncryptedDEKSource))
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
