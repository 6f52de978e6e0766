package verify

import (
	"fmt"
	"strings"
)

// builtinGroups are the API groups kube-apiserver itself stores. Their
// objects live under <prefix>/<resource>/, without the group; objects of
// every other group (CustomResourceDefinitions, APIServices, custom
// resources) live under <prefix>/<group>/<resource>/.
var builtinGroups = map[string]bool{
	"": true, "apps": true, "autoscaling": true, "batch": true, "extensions": true, "policy": true,
	"admissionregistration.k8s.io": true, "certificates.k8s.io": true, "coordination.k8s.io": true,
	"discovery.k8s.io": true, "events.k8s.io": true, "flowcontrol.apiserver.k8s.io": true,
	"internal.apiserver.k8s.io": true, "networking.k8s.io": true, "node.k8s.io": true,
	"rbac.authorization.k8s.io": true, "resource.k8s.io": true, "scheduling.k8s.io": true,
	"storage.k8s.io": true, "storagemigration.k8s.io": true,
}

// specialPrefixes are the built-in resources stored under another name
// (k8s.io/kubernetes pkg/kubeapiserver SpecialDefaultResourcePrefixes).
var specialPrefixes = map[string]string{
	"replicationcontrollers":      "controllers",
	"endpoints":                   "services/endpoints",
	"nodes":                       "minions",
	"services":                    "services/specs",
	"ingresses.extensions":        "ingress",
	"ingresses.networking.k8s.io": "ingress",
}

// KeyPrefix returns the etcd key prefix, ending in "/", under which
// kube-apiserver with --etcd-prefix etcdPrefix stores resource, written as
// in an EncryptionConfiguration: "secrets", "deployments.apps",
// "widgets.example.com". A resource that starts with "/" is taken as an
// etcd key prefix as it is, for layouts this function does not know.
func KeyPrefix(etcdPrefix, resource string) (string, error) {
	if strings.HasPrefix(resource, "/") {
		return strings.TrimSuffix(resource, "/") + "/", nil
	}
	if resource == "" || strings.ContainsAny(resource, "*/ ") {
		return "", fmt.Errorf("resource %q: want a name such as secrets or deployments.apps", resource)
	}
	base := strings.TrimSuffix(etcdPrefix, "/")
	if p, ok := specialPrefixes[resource]; ok {
		return base + "/" + p + "/", nil
	}
	name, group, _ := strings.Cut(resource, ".")
	if builtinGroups[group] {
		return base + "/" + name + "/", nil
	}
	return base + "/" + group + "/" + name + "/", nil
}

// splitKey splits the part of a key after its resource prefix into
// namespace and name; cluster-scoped objects have no namespace.
func splitKey(rest string) (namespace, name string) {
	if ns, n, ok := strings.Cut(rest, "/"); ok {
		return ns, n
	}
	return "", rest
}
