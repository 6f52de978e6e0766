// Package encryptionconfig reads a kube-apiserver EncryptionConfiguration
// file with k8s.io/apiserver's own types, decoder and validation, and says
// which resources it encrypts and with which providers, so that kmsctl
// verify, migrate and rotate work on exactly what the apiserver encrypts.
package encryptionconfig

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/apis/apiserver/install"
	"k8s.io/apiserver/pkg/apis/apiserver/validation"
)

var codecs = func() serializer.CodecFactory {
	scheme := runtime.NewScheme()
	install.Install(scheme)
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict)
}()

// Resources is one entry of the configuration: the resources it names and
// the providers that apply to them, first one writing.
type Resources struct {
	// Resources are as written: "secrets", "deployments.apps", "*.apps".
	Resources []string
	// Providers describe the providers in order, e.g. "kms v2 kms-plugin",
	// "identity", "aescbc".
	Providers []Provider
}

// Provider is one provider of an entry.
type Provider struct {
	// Type is identity, aescbc, aesgcm, secretbox, kms-v1 or kms-v2.
	Type string
	// Name is the kms provider's name; empty for other types.
	Name string
	// Endpoint is the kms provider's socket (unix:///path); empty for
	// other types.
	Endpoint string
}

// Load reads, decodes and validates an EncryptionConfiguration file as
// kube-apiserver does.
func Load(path string) ([]Resources, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read encryption config: %w", err)
	}
	return Parse(data)
}

// Parse decodes and validates an EncryptionConfiguration document.
func Parse(data []byte) ([]Resources, error) {
	obj, gvk, err := codecs.UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("decode encryption config: %w", err)
	}
	cfg, ok := obj.(*apiserver.EncryptionConfiguration)
	if !ok {
		return nil, fmt.Errorf("decode encryption config: got %v, want EncryptionConfiguration", gvk)
	}
	if err := validation.ValidateEncryptionConfiguration(cfg, false).ToAggregate(); err != nil {
		return nil, fmt.Errorf("invalid encryption config: %w", err)
	}
	var out []Resources
	for _, rc := range cfg.Resources {
		r := Resources{Resources: append([]string(nil), rc.Resources...)}
		for _, p := range rc.Providers {
			r.Providers = append(r.Providers, providerOf(p))
		}
		out = append(out, r)
	}
	return out, nil
}

func providerOf(p apiserver.ProviderConfiguration) Provider {
	switch {
	case p.AESCBC != nil:
		return Provider{Type: "aescbc"}
	case p.AESGCM != nil:
		return Provider{Type: "aesgcm"}
	case p.Secretbox != nil:
		return Provider{Type: "secretbox"}
	case p.KMS != nil && p.KMS.APIVersion == "v2":
		return Provider{Type: "kms-v2", Name: p.KMS.Name, Endpoint: p.KMS.Endpoint}
	case p.KMS != nil:
		return Provider{Type: "kms-v1", Name: p.KMS.Name, Endpoint: p.KMS.Endpoint}
	default:
		return Provider{Type: "identity"}
	}
}

// EncryptedResources returns the resources of every entry that lists a
// provider other than identity at any position, in file order without
// duplicates. An entry such as [identity, kms] reads plaintext first but
// still holds objects written under the KMS provider (before the order
// changed, or by another apiserver), so it counts: skipping it would let a
// rotation retire a key that those objects still need. A wildcard ("*.*",
// "*.apps", "*.") cannot be expanded without asking the apiserver; it is an
// error, naming the wildcard, so the caller asks for an explicit list
// instead of silently skipping resources.
func EncryptedResources(cfg []Resources) ([]string, error) {
	return selectResources(cfg, func(p Provider) bool { return p.Type != "identity" })
}

// ResourcesFor returns the resources of every entry that lists the KMS
// provider named name (v1 or v2) at any position, as EncryptedResources
// does for any provider.
func ResourcesFor(cfg []Resources, name string) ([]string, error) {
	return selectResources(cfg, func(p Provider) bool { return p.Name == name && strings.HasPrefix(p.Type, "kms-") })
}

func selectResources(cfg []Resources, match func(Provider) bool) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, r := range cfg {
		if !slices.ContainsFunc(r.Providers, match) {
			continue
		}
		for _, res := range r.Resources {
			if strings.HasPrefix(res, "*.") {
				return nil, fmt.Errorf("encryption config names the wildcard %q: list the resources it covers explicitly with --resources", res)
			}
			if !seen[res] {
				seen[res] = true
				out = append(out, res)
			}
		}
	}
	return out, nil
}
