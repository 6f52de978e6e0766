//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/test/cluster"
)

// TestRotation checks that a key rotated with kmsctl on the running plugin
// reaches kube-apiserver: new writes carry the new keyID, old objects still
// read, and an update re-encrypts an old object under the new key.
func TestRotation(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ns := c.Namespace(t)
	checkRotation(ctx, t, c, ns, c.Rotate)
}

// checkRotation is check 2 of the end-to-end suite for any provider; rotate
// makes the provider's current key a new one and returns its key_id.
func checkRotation(ctx context.Context, t *testing.T, c *cluster.Cluster, ns string, rotate func(context.Context) (string, error)) {
	oldKey, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oldValue := secretValue(t)
	createSecret(ctx, t, c, ns, "before-rotation", oldValue)
	checkEncrypted(ctx, t, c, "secrets", ns, "before-rotation", oldValue, oldKey)

	newKey, err := rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if newKey == oldKey {
		t.Fatalf("rotation kept key_id %q", oldKey)
	}
	t.Logf("rotated key_id %q -> %q", oldKey, newKey)

	waitAPIServerKeyID(ctx, t, c, newKey)

	// The apiserver has seen the new key_id in a Status reply; the write
	// that follows the DEK seed switch must carry it. Poll writes rather
	// than assume the switch is done the moment the metric moved.
	var name string
	var value []byte
	n := 0
	err = cluster.Poll(ctx, 200*time.Millisecond, time.Minute, "a new write carries the rotated keyID", func(ctx context.Context) (bool, error) {
		n++
		name, value = fmt.Sprintf("after-rotation-%d", n), secretValue(t)
		if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, newSecret(name, value), metav1.CreateOptions{}); err != nil {
			return false, err
		}
		got, err := c.StoredKeyID(ctx, ns, name)
		if err != nil {
			return false, cluster.Permanent(err)
		}
		return got == newKey, fmt.Errorf("secret %s stored under keyID %q", name, got)
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSecretReads(ctx, t, c, ns, name, value)
	checkEncrypted(ctx, t, c, "secrets", ns, name, value, newKey)

	// The old Secret is untouched in etcd and still reads.
	checkSecretReads(ctx, t, c, ns, "before-rotation", oldValue)
	checkEncrypted(ctx, t, c, "secrets", ns, "before-rotation", oldValue, oldKey)

	// An update with nothing changed re-encrypts it under the new key: the
	// apiserver marks an object read under an old keyID as stale.
	s, err := c.Client.CoreV1().Secrets(ns).Get(ctx, "before-rotation", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update secret %s/before-rotation: %v", ns, err)
	}
	checkSecretReads(ctx, t, c, ns, "before-rotation", oldValue)
	checkEncrypted(ctx, t, c, "secrets", ns, "before-rotation", oldValue, newKey)
}

// waitAPIServerKeyID waits until kube-apiserver's
// apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds
// has a sample for keyID from this cluster's provider, which the apiserver
// records when a Status reply carries that key_id. It polls
// /healthz/kms-providers meanwhile, which makes the apiserver call Status
// once its 20 s health cache lapses instead of waiting for its 60 s poll.
func waitAPIServerKeyID(ctx context.Context, t *testing.T, c *cluster.Cluster, keyID string) {
	t.Helper()
	const metric = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"
	labels := map[string]string{
		"provider_name": c.ProviderName,
		"key_id_hash":   fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(keyID))),
	}
	start := time.Now()
	err := cluster.Poll(ctx, time.Second, 3*time.Minute, "kube-apiserver reports the new key_id from Status", func(ctx context.Context) (bool, error) {
		_ = c.ProbeKMS(ctx) // only to trigger a Status call; its answer is checked below
		mfs, err := c.Metrics(ctx)
		if err != nil {
			return false, err
		}
		_, ok := cluster.MetricValue(mfs, metric, labels)
		return ok, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver saw key_id %q from Status after %s", keyID, time.Since(start).Round(time.Second))
}
