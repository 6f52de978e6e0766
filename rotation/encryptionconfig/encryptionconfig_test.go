package encryptionconfig

import (
	"reflect"
	"strings"
	"testing"
)

const twoProviders = `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: ["events"]
    providers:
      - identity: {}
  - resources: ["secrets", "configmaps", "widgets.example.com"]
    providers:
      - kms:
          apiVersion: v2
          name: vault
          endpoint: unix:///var/run/kms-plugin/vault.sock
      - kms:
          apiVersion: v2
          name: kms-plugin
          endpoint: unix:///var/run/kms-plugin/kms.sock
      - identity: {}
`

func TestParse(t *testing.T) {
	cfg, err := Parse([]byte(twoProviders))
	if err != nil {
		t.Fatalf("Parse() = %v", err)
	}
	want := []Provider{{Type: "kms-v2", Name: "vault", Endpoint: "unix:///var/run/kms-plugin/vault.sock"}, {Type: "kms-v2", Name: "kms-plugin", Endpoint: "unix:///var/run/kms-plugin/kms.sock"}, {Type: "identity"}}
	if len(cfg) != 2 || !reflect.DeepEqual(cfg[1].Providers, want) {
		t.Fatalf("Parse() = %+v, want second entry's providers %+v", cfg, want)
	}
	res, err := EncryptedResources(cfg)
	if err != nil || !reflect.DeepEqual(res, []string{"secrets", "configmaps", "widgets.example.com"}) {
		t.Errorf("EncryptedResources() = %v, %v; want secrets, configmaps, widgets.example.com (events are identity)", res, err)
	}
}

// TestResourcesAnyPosition: an entry whose first provider is identity
// still holds objects under the KMS provider behind it, so it is selected;
// one that lists only identity, or only another provider, is not.
func TestResourcesAnyPosition(t *testing.T) {
	const doc = `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: ["events"]
    providers:
      - identity: {}
  - resources: ["secrets"]
    providers:
      - identity: {}
      - kms: {apiVersion: v2, name: kms-plugin, endpoint: unix:///var/run/kms-plugin/kms.sock}
  - resources: ["configmaps"]
    providers:
      - identity: {}
      - kms: {apiVersion: v2, name: kms-plugin-configmaps, endpoint: unix:///var/run/kms-plugin/kms.sock}
  - resources: ["leases.coordination.k8s.io"]
    providers:
      - aescbc: {keys: [{name: k, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}]}
`
	cfg, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if res, err := EncryptedResources(cfg); err != nil || !reflect.DeepEqual(res, []string{"secrets", "configmaps", "leases.coordination.k8s.io"}) {
		t.Errorf("EncryptedResources() = %v, %v; want secrets, configmaps (identity first, kms second) and leases", res, err)
	}
	if res, err := ResourcesFor(cfg, "kms-plugin"); err != nil || !reflect.DeepEqual(res, []string{"secrets"}) {
		t.Errorf("ResourcesFor(kms-plugin) = %v, %v; want secrets (identity first, kms-plugin second)", res, err)
	}
	if res, err := ResourcesFor(cfg, "other"); err != nil || len(res) != 0 {
		t.Errorf("ResourcesFor(other) = %v, %v; want none", res, err)
	}
}

func TestParseRefuses(t *testing.T) {
	tests := []struct{ name, doc, want string }{
		{"not yaml", "{", "decode"},
		{"wrong kind", "apiVersion: v1\nkind: ConfigMap\n", "decode"},
		{"kms without endpoint", "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - kms: {apiVersion: v2, name: x}\n", "invalid"},
	}
	for _, tt := range tests {
		if _, err := Parse([]byte(tt.doc)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Parse() = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	wild := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['*.*']\n  providers:\n  - aescbc: {keys: [{name: k, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}]}\n"
	cfg, err := Parse([]byte(wild))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EncryptedResources(cfg); err == nil || !strings.Contains(err.Error(), "*.*") {
		t.Errorf("EncryptedResources(*.*) = %v, want an error naming the wildcard", err)
	}
}
