//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/test/cluster"
)

// TestBackendMigration is check 6: moving every Secret from the local
// keyring backend to Vault by the procedure of docs/install.md, with the
// samples it names. Two plugins run side by side. Secrets written under
// deploy/encryption-config/local.yaml are stored under the local provider;
// after the switch to local-to-vault.yaml (Vault first, local second) they
// still read, new writes go to Vault, and rewriting every Secret moves all
// of them to Vault. Finally the local plugin is stopped, kube-apiserver
// restarts on vault.yaml alone, and every Secret still reads.
func TestBackendMigration(t *testing.T) {
	if cluster.UsesExistingCluster() {
		t.Skip("needs a local cluster: it runs kms-plugin on a Vault the test starts and restarts kube-apiserver with other configurations")
	}
	const localProviderName = "kms-plugin" // as in deploy/encryption-config/local.yaml
	v := startVault(t)
	c := cluster.Start(t, cluster.Options{
		Plugins:          []cluster.PluginSpec{cluster.LocalPlugin(t, localProviderName, "kms.sock"), v.plugin()},
		EncryptionConfig: "deploy/encryption-config/local.yaml",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	localPlugin, vaultPlugin := c.Plugin(localProviderName), c.Plugin(vaultProviderName)
	if c.ProviderName != localProviderName {
		t.Fatalf("ProviderName = %q, want %q from deploy/encryption-config/local.yaml", c.ProviderName, localProviderName)
	}
	localKey, err := localPlugin.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Secrets in two namespaces, written under the local backend.
	type object struct{ ns, name string }
	values := map[object][]byte{}
	for _, ns := range []string{c.Namespace(t), c.Namespace(t)} {
		for i := range 10 {
			o := object{ns, fmt.Sprintf("local-%d", i)}
			values[o] = secretValue(t)
			createSecret(ctx, t, c, o.ns, o.name, values[o])
			checkEncrypted(ctx, t, c, "secrets", o.ns, o.name, values[o], localKey)
		}
	}

	// Vault first (encrypts), local second (decrypts what it wrote).
	if err := c.UseEncryptionConfig(ctx, "deploy/encryption-config/local-to-vault.yaml"); err != nil {
		t.Fatal(err)
	}
	if c.ProviderName != vaultProviderName {
		t.Fatalf("after the switch ProviderName = %q, want %q from deploy/encryption-config/local-to-vault.yaml", c.ProviderName, vaultProviderName)
	}
	vaultKey, err := vaultPlugin.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for o, value := range values {
		checkSecretReads(ctx, t, c, o.ns, o.name, value)
		raw, err := c.Raw(ctx, "secrets", o.ns, o.name)
		if err != nil {
			t.Fatal(err)
		}
		if obj, err := localPlugin.Encrypted(raw); err != nil || obj.KeyID != localKey {
			t.Fatalf("secret %s/%s changed in etcd before it was rewritten: keyID %q, err %v; want %q under %s",
				o.ns, o.name, obj.GetKeyID(), err, localKey, localPlugin.Prefix())
		}
	}
	newNS := c.Namespace(t)
	o := object{newNS, "after-switch"}
	values[o] = secretValue(t)
	createSecret(ctx, t, c, o.ns, o.name, values[o])
	checkEncrypted(ctx, t, c, "secrets", o.ns, o.name, values[o], vaultKey)

	// What `kubectl get secrets -A -o json | kubectl replace -f -` does: an
	// object read through a provider other than the first is stale, so an
	// update without changes rewrites it under the first.
	list, err := c.Client.CoreV1().Secrets(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		s := &list.Items[i]
		if _, err := c.Client.CoreV1().Secrets(s.Namespace).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("rewrite secret %s/%s: %v", s.Namespace, s.Name, err)
		}
	}

	// Every Secret in etcd is now Vault's, none is the local provider's.
	raw, err := c.Etcd.Get(ctx, c.EtcdPrefix+"/secrets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	stored := map[object]bool{}
	for _, kv := range raw.Kvs {
		obj, err := vaultPlugin.Encrypted(kv.Value)
		if err != nil || obj.KeyID != vaultKey {
			t.Errorf("etcd %s after the rewrite: keyID %q, err %v; want keyID %q under %s", kv.Key, obj.GetKeyID(), err, vaultKey, vaultPlugin.Prefix())
		}
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), c.EtcdPrefix+"/secrets/"), "/")
		o := object{parts[0], parts[len(parts)-1]}
		if v, ok := values[o]; ok && bytes.Contains(kv.Value, v) {
			t.Errorf("etcd %s contains the secret's plaintext", kv.Key)
		}
		stored[o] = true
	}
	for o := range values {
		if !stored[o] {
			t.Errorf("secret %s/%s is missing from etcd", o.ns, o.name)
		}
	}
	for o, value := range values {
		checkSecretReads(ctx, t, c, o.ns, o.name, value)
	}
	t.Logf("%d secrets rewritten; etcd holds %d secret values, all %s with keyID %q", len(list.Items), len(raw.Kvs), vaultPlugin.Prefix(), vaultKey)
	if t.Failed() {
		return
	}

	// The last step: the local plugin stops and kube-apiserver runs on
	// vault.yaml alone. Its cold start decrypts everything through Vault.
	before := v.decrypts()
	if err := localPlugin.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.UseEncryptionConfig(ctx, "deploy/encryption-config/vault.yaml"); err != nil {
		t.Fatal(err)
	}
	for o, value := range values {
		checkSecretReads(ctx, t, c, o.ns, o.name, value)
	}
	after := v.decrypts()
	if after <= before {
		t.Fatalf("Vault served %d transit decrypts before kube-apiserver restarted on vault.yaml and %d after, want more", before, after)
	}
	t.Logf("on vault.yaml with the local plugin stopped: %d secrets read back; Vault transit decrypts %d -> %d", len(values), before, after)
}
