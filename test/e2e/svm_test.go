//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	svmv1 "k8s.io/api/storagemigration/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/test/cluster"
)

// TestStorageVersionMigration checks that kube-controller-manager's storage
// version migrator re-encrypts Secrets under a rotated key: a
// StorageVersionMigration for secrets reaches Succeeded, and every Secret
// written before the rotation is then stored under the new keyID.
func TestStorageVersionMigration(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Controllers: []string{
		// The migrator reads the objects to rewrite from the garbage
		// collector's informers.
		"garbage-collector-controller",
		"storage-version-migrator-controller",
	}})
	if !c.Local() {
		t.Skip("needs a local cluster: a migration rewrites every Secret of the cluster")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ns := c.Namespace(t)

	oldKey, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	values := map[string][]byte{}
	for i := range 5 {
		name := fmt.Sprintf("before-%d", i)
		values[name] = secretValue(t)
		createSecret(ctx, t, c, ns, name, values[name])
		checkEncrypted(ctx, t, c, "secrets", ns, name, values[name], oldKey)
	}

	newKey, err := c.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitAPIServerKeyID(ctx, t, c, newKey)
	// Only once a new write carries the new keyID does the apiserver read
	// the old ones as stale, which is what makes the migrator's empty
	// patch rewrite them.
	n := 0
	err = cluster.Poll(ctx, 200*time.Millisecond, time.Minute, "a new write carries the rotated keyID", func(ctx context.Context) (bool, error) {
		n++
		name := fmt.Sprintf("after-%d", n)
		if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, newSecret(name, secretValue(t)), metav1.CreateOptions{}); err != nil {
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

	svms := c.Client.StoragemigrationV1().StorageVersionMigrations()
	svm, err := svms.Create(ctx, &svmv1.StorageVersionMigration{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "secrets-"},
		Spec:       svmv1.StorageVersionMigrationSpec{Resource: metav1.GroupResource{Group: "", Resource: "secrets"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svms.Delete(context.Background(), svm.Name, metav1.DeleteOptions{}) })

	start := time.Now()
	nudged := false
	err = cluster.Poll(ctx, 200*time.Millisecond, 5*time.Minute, "StorageVersionMigration "+svm.Name+" succeeds", func(ctx context.Context) (bool, error) {
		got, err := svms.Get(ctx, svm.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		svm = got
		if cond := meta.FindStatusCondition(svm.Status.Conditions, string(svmv1.MigrationFailed)); cond != nil && cond.Status == metav1.ConditionTrue {
			return false, cluster.Permanent(fmt.Errorf("failed: %s", cond.Message))
		}
		// The migrator waits until the garbage collector's informer for
		// secrets has caught up with status.resourceVersion. On an idle
		// cluster that takes a watch bookmark, a minute or more; one
		// write to a Secret after the resourceVersion is set ends the
		// wait at once.
		if svm.Status.ResourceVersion != "" && !nudged {
			createSecret(ctx, t, c, ns, "nudge", secretValue(t))
			nudged = true
		}
		return meta.IsStatusConditionTrue(svm.Status.Conditions, string(svmv1.MigrationSucceeded)),
			fmt.Errorf("status %+v", svm.Status)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("StorageVersionMigration %s succeeded in %s", svm.Name, time.Since(start).Round(time.Millisecond))

	for name, value := range values {
		checkSecretReads(ctx, t, c, ns, name, value)
		checkEncrypted(ctx, t, c, "secrets", ns, name, value, newKey)
	}
}
