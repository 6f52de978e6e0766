//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/test/cluster"
)

// TestMigrationFromIdentity checks the path from an unencrypted cluster:
// Secrets written before encryption is enabled are plaintext in etcd, still
// read once kube-apiserver lists kms-plugin first and identity second, and
// are encrypted after they are rewritten unchanged.
func TestMigrationFromIdentity(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Plaintext: true})
	if !c.Local() {
		t.Skip("needs a local cluster: it restarts kube-apiserver with another EncryptionConfiguration")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ns := c.Namespace(t)

	values := map[string][]byte{}
	for i := range 10 {
		name := fmt.Sprintf("plain-%d", i)
		values[name] = secretValue(t)
		createSecret(ctx, t, c, ns, name, values[name])
		raw, err := c.Raw(ctx, "secrets", ns, name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(raw, []byte("k8s\x00")) || !bytes.Contains(raw, values[name]) {
			t.Fatalf("before encryption, secret %s/%s in etcd starts %q and contains its value: %v; want plaintext protobuf",
				ns, name, raw[:min(len(raw), 16)], bytes.Contains(raw, values[name]))
		}
	}

	if err := c.EnableEncryption(ctx); err != nil {
		t.Fatal(err)
	}
	keyID, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Still plaintext, still readable through identity.
	for name, value := range values {
		checkSecretReads(ctx, t, c, ns, name, value)
		raw, err := c.Raw(ctx, "secrets", ns, name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(raw, value) {
			t.Fatalf("secret %s/%s changed in etcd before it was rewritten", ns, name)
		}
	}

	// What `kubectl get secrets -o json | kubectl replace -f -` does.
	list, err := c.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		if _, err := c.Client.CoreV1().Secrets(ns).Update(ctx, &list.Items[i], metav1.UpdateOptions{}); err != nil {
			t.Fatalf("rewrite secret %s: %v", list.Items[i].Name, err)
		}
	}
	for name, value := range values {
		checkSecretReads(ctx, t, c, ns, name, value)
		checkEncrypted(ctx, t, c, "secrets", ns, name, value, keyID)
	}

	// And a new Secret is encrypted from the start.
	value := secretValue(t)
	createSecret(ctx, t, c, ns, "after-migration", value)
	checkEncrypted(ctx, t, c, "secrets", ns, "after-migration", value, keyID)
	t.Logf("%d plaintext secrets rewritten under keyID %q", len(values), keyID)
}
