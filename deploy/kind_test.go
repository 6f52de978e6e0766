package deploy_test

import (
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// kindCluster is the part of kind's v1alpha4 Cluster that deploy/kind uses.
// Decoding is strict, so a misspelt field fails.
type kindCluster struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion"`
	Name       string `json:"name"`
	Nodes      []struct {
		Role        string `json:"role"`
		ExtraMounts []struct {
			HostPath      string `json:"hostPath"`
			ContainerPath string `json:"containerPath"`
			ReadOnly      bool   `json:"readOnly"`
		} `json:"extraMounts"`
		ExtraPortMappings []struct {
			ContainerPort int    `json:"containerPort"`
			HostPort      int    `json:"hostPort"`
			ListenAddress string `json:"listenAddress"`
		} `json:"extraPortMappings"`
		KubeadmConfigPatches []string `json:"kubeadmConfigPatches"`
	} `json:"nodes"`
}

// kubeadmPatch is the part of a kubeadm v1beta4 ClusterConfiguration that
// the kind config patches.
type kubeadmPatch struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	APIServer  struct {
		ExtraArgs []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"extraArgs"`
		ExtraVolumes []struct {
			Name      string `json:"name"`
			HostPath  string `json:"hostPath"`
			MountPath string `json:"mountPath"`
			ReadOnly  bool   `json:"readOnly"`
			PathType  string `json:"pathType"`
		} `json:"extraVolumes"`
	} `json:"apiServer"`
}

// TestKindConfig checks that the kind cluster wires what kube-apiserver
// needs: the EncryptionConfiguration flag pointing into a mounted
// directory, automatic reload, the plugin's socket directory, and etcd
// reachable from the host for the tests.
func TestKindConfig(t *testing.T) {
	var found bool
	for _, d := range manifests(t) {
		if d.typ.Kind != "Cluster" || d.typ.APIVersion != "kind.x-k8s.io/v1alpha4" {
			continue
		}
		found = true
		var c kindCluster
		if err := yaml.UnmarshalStrict(d.raw, &c); err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if len(c.Nodes) != 1 || c.Nodes[0].Role != "control-plane" {
			t.Fatalf("%s: want one control-plane node", d)
		}
		n := c.Nodes[0]
		mounted := map[string]bool{} // node paths backed by the host
		for _, m := range n.ExtraMounts {
			if !filepath.IsAbs(m.HostPath) {
				t.Errorf("%s: extraMount hostPath %q is not absolute", d, m.HostPath)
			}
			mounted[m.ContainerPath] = true
		}
		etcd := false
		for _, p := range n.ExtraPortMappings {
			if p.ContainerPort == 2379 && p.ListenAddress == "127.0.0.1" {
				etcd = true
			}
		}
		if !etcd {
			t.Errorf("%s: etcd's port 2379 is not mapped to the host's loopback", d)
		}

		var patched bool
		for _, raw := range n.KubeadmConfigPatches {
			var p kubeadmPatch
			if err := yaml.UnmarshalStrict([]byte(raw), &p); err != nil {
				t.Errorf("%s: kubeadm patch: %v", d, err)
				continue
			}
			if p.Kind != "ClusterConfiguration" {
				continue
			}
			patched = true
			args := map[string]string{}
			for _, a := range p.APIServer.ExtraArgs {
				args[a.Name] = a.Value
			}
			cfg := args["encryption-provider-config"]
			if args["encryption-provider-config-automatic-reload"] != "true" {
				t.Errorf("%s: apiserver lacks --encryption-provider-config-automatic-reload=true, which e2e.sh relies on", d)
			}
			var cfgMounted, socketMounted bool
			for _, v := range p.APIServer.ExtraVolumes {
				if cfg != "" && filepath.Dir(cfg) == v.MountPath {
					cfgMounted = true
					if !mounted[v.HostPath] {
						t.Errorf("%s: apiserver volume %s comes from node path %s, which no extraMount fills", d, v.Name, v.HostPath)
					}
					if !v.ReadOnly {
						t.Errorf("%s: apiserver volume %s should be read-only", d, v.Name)
					}
				}
				if v.MountPath == "/var/run/kms-plugin" && v.HostPath == "/var/run/kms-plugin" {
					socketMounted = true
				}
			}
			if !strings.HasPrefix(cfg, "/") || !cfgMounted {
				t.Errorf("%s: --encryption-provider-config=%q is not inside a directory mounted into the apiserver", d, cfg)
			}
			if !socketMounted {
				t.Errorf("%s: the apiserver does not mount the plugin's socket directory /var/run/kms-plugin", d)
			}
		}
		if !patched {
			t.Errorf("%s: no kubeadm ClusterConfiguration patch", d)
		}
	}
	if !found {
		t.Fatal("no kind Cluster config under deploy/")
	}
}
