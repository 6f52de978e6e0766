package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"sigs.k8s.io/yaml"

	"github.com/kms-plugin/kms-plugin/test/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// doc is one YAML document of a file under deploy/.
type doc struct {
	path string // relative to deploy/
	idx  int    // position in a multi-document file
	raw  []byte
	typ  struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
}

func (d doc) String() string {
	if d.idx == 0 {
		return d.path
	}
	return d.path + "#" + strconv.Itoa(d.idx)
}

// manifests returns every YAML document under deploy/, so that a new
// manifest is checked as soon as it is added.
func manifests(t *testing.T) []doc {
	t.Helper()
	var docs []doc
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for i := 0; ; i++ {
			chunk, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if len(bytes.TrimSpace(stripComments(chunk))) == 0 {
				continue
			}
			d := doc{path: path, idx: i, raw: chunk}
			if err := yaml.Unmarshal(chunk, &d.typ); err != nil {
				t.Errorf("%s: not YAML: %v", d, err)
				continue
			}
			docs = append(docs, d)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) == 0 {
		t.Fatal("no manifests found under deploy/")
	}
	return docs
}

// TestManifestsAreKnown fails on a manifest that no test below checks.
func TestManifestsAreKnown(t *testing.T) {
	for _, d := range manifests(t) {
		if d.path == rulesFile || d.path == rulesTestFile {
			continue // Prometheus files, checked by monitoring_test.go
		}
		switch d.typ.APIVersion + " " + d.typ.Kind {
		case "v1 Pod", "apiserver.config.k8s.io/v1 EncryptionConfiguration", "kind.x-k8s.io/v1alpha4 Cluster":
		default:
			t.Errorf("%s: %s %s is not validated by deploy's tests; add a check", d, d.typ.APIVersion, d.typ.Kind)
		}
	}
}

func pods(t *testing.T) map[string]*corev1.Pod {
	t.Helper()
	out := map[string]*corev1.Pod{}
	for _, d := range manifests(t) {
		if d.typ.APIVersion != "v1" || d.typ.Kind != "Pod" {
			continue
		}
		var p corev1.Pod
		if err := yaml.UnmarshalStrict(d.raw, &p); err != nil {
			t.Errorf("%s: decode as a v1 Pod: %v", d, err)
			continue
		}
		out[d.String()] = &p
	}
	return out
}

// TestStaticPodHardening checks the security and scheduling fields every
// kms-plugin pod must have.
func TestStaticPodHardening(t *testing.T) {
	ps := pods(t)
	if _, ok := ps[filepath.Join("static-pod", "kms-plugin.yaml")]; !ok {
		t.Fatalf("static-pod/kms-plugin.yaml is missing or not a Pod; have %v", keys(ps))
	}
	for name, p := range ps {
		t.Run(name, func(t *testing.T) { checkPod(t, p) })
	}
}

func checkPod(t *testing.T, p *corev1.Pod) {
	s := p.Spec
	if p.Namespace != "kube-system" {
		t.Errorf("namespace = %q, want kube-system", p.Namespace)
	}
	if s.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q, want system-node-critical", s.PriorityClassName)
	}
	if s.AutomountServiceAccountToken == nil || *s.AutomountServiceAccountToken {
		t.Errorf("automountServiceAccountToken = %v, want false", ptrString(s.AutomountServiceAccountToken))
	}
	// With host networking, ClusterFirstWithHostNet (or ClusterFirst)
	// would resolve names through CoreDNS, which needs the apiserver,
	// which needs this plugin: a circular dependency at a cold start.
	if s.DNSPolicy != corev1.DNSDefault {
		t.Errorf("dnsPolicy = %q, want %q (the node's resolver; cluster DNS depends on this plugin)", s.DNSPolicy, corev1.DNSDefault)
	}
	if s.HostPID || s.HostIPC {
		t.Errorf("hostPID = %v, hostIPC = %v, want false", s.HostPID, s.HostIPC)
	}
	if len(s.InitContainers) != 0 {
		t.Errorf("%d init containers; a root init container would undo the hardening", len(s.InitContainers))
	}
	if len(s.Containers) == 0 {
		t.Fatal("no containers")
	}
	pod := s.SecurityContext
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	readOnlyVolumes := map[string]bool{}
	for _, c := range s.Containers {
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("container %s: no securityContext", c.Name)
			continue
		}
		runAsNonRoot := first(sc.RunAsNonRoot, pod.RunAsNonRoot)
		uid := first(sc.RunAsUser, pod.RunAsUser)
		gid := first(sc.RunAsGroup, pod.RunAsGroup)
		if runAsNonRoot == nil || !*runAsNonRoot {
			t.Errorf("container %s: runAsNonRoot is not true", c.Name)
		}
		if uid == nil || *uid == 0 || gid == nil || *gid == 0 {
			t.Errorf("container %s: runAsUser = %v, runAsGroup = %v, want a fixed non-root uid and gid", c.Name, ptrString(uid), ptrString(gid))
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s: privileged", c.Name)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) != 0 {
			t.Errorf("container %s: capabilities = %+v, want drop [ALL] and no add", c.Name, sc.Capabilities)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil {
			seccomp = pod.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("container %s: seccompProfile = %+v, want RuntimeDefault", c.Name, seccomp)
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, hasReq := c.Resources.Requests[r]
			lim, hasLim := c.Resources.Limits[r]
			if !hasReq || !hasLim {
				t.Errorf("container %s: %s request %v / limit %v, want both", c.Name, r, quantity(req, hasReq), quantity(lim, hasLim))
			} else if req.Cmp(lim) > 0 {
				t.Errorf("container %s: %s request %s exceeds limit %s", c.Name, r, req.String(), lim.String())
			}
		}

		healthPort := healthPort(t, c)
		checkProbe(t, c.Name, "livenessProbe", c.LivenessProbe, "/livez", healthPort)
		checkProbe(t, c.Name, "readinessProbe", c.ReadinessProbe, "/readyz", healthPort)

		for _, m := range c.VolumeMounts {
			readOnlyVolumes[m.Name] = readOnlyVolumes[m.Name] || m.ReadOnly
			if !m.ReadOnly {
				// Only the socket directory needs writing.
				if m.MountPath != "/var/run/kms-plugin" {
					t.Errorf("container %s: volume %s mounted writable at %s; only the socket directory /var/run/kms-plugin may be", c.Name, m.Name, m.MountPath)
				}
			}
		}
		if listen := flagValue(c, "listen"); !strings.HasPrefix(listen, "unix:///var/run/kms-plugin/") {
			t.Errorf("container %s: --listen = %q, want a socket in /var/run/kms-plugin/ (the mounted socket directory)", c.Name, listen)
		}
	}
	hasSocketDir := false
	for _, v := range s.Volumes {
		if v.HostPath == nil {
			continue
		}
		if v.HostPath.Path == "/var/run/kms-plugin" {
			hasSocketDir = true
			continue
		}
		if !readOnlyVolumes[v.Name] {
			t.Errorf("hostPath volume %s (%s) is not mounted read-only", v.Name, v.HostPath.Path)
		}
	}
	if !hasSocketDir {
		t.Errorf("no hostPath volume for the socket directory /var/run/kms-plugin, which kube-apiserver mounts too")
	}
}

func checkProbe(t *testing.T, container, name string, p *corev1.Probe, path string, port int) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("container %s: %s is not an httpGet probe", container, name)
		return
	}
	if p.HTTPGet.Path != path {
		t.Errorf("container %s: %s path = %q, want %q", container, name, p.HTTPGet.Path, path)
	}
	if p.HTTPGet.Port != intstr.FromInt(port) {
		t.Errorf("container %s: %s port = %s, want %d (from --health-addr)", container, name, p.HTTPGet.Port.String(), port)
	}
}

// healthPort returns the port of the container's --health-addr.
func healthPort(t *testing.T, c corev1.Container) int {
	t.Helper()
	addr := flagValue(c, "health-addr")
	if addr == "" {
		addr = "127.0.0.1:8787" // kms-plugin's default
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("container %s: --health-addr %q: %v", c.Name, addr, err)
		return 0
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Errorf("container %s: --health-addr %q: %v", c.Name, addr, err)
	}
	return n
}

// flagValue returns the value of --name=value in the container's args.
func flagValue(c corev1.Container, name string) string {
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// TestStaticPodFlags runs the real kms-plugin binary's flag parser over
// every pod's arguments, so that a renamed or misspelled flag fails here
// rather than crash-looping on a control-plane node.
func TestStaticPodFlags(t *testing.T) {
	bin := testbin.Build(t, "./cmd/kms-plugin")
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+-{1,2}([a-z0-9-]+)`).FindAllSubmatch(out, -1) {
		known[string(m[1])] = true
	}
	if !known["listen"] {
		t.Fatalf("could not read kms-plugin's flags from -h:\n%s", out)
	}
	for name, p := range pods(t) {
		for _, c := range p.Spec.Containers {
			for _, a := range c.Args {
				flag, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
				if !strings.HasPrefix(a, "-") || !known[flag] {
					t.Errorf("%s: container %s: argument %q is not a kms-plugin flag", name, c.Name, a)
				}
			}
		}
	}
}

// TestEncryptionConfigsLoad loads every EncryptionConfiguration with
// kube-apiserver's own loader, so that a sample the apiserver would reject
// fails here.
func TestEncryptionConfigsLoad(t *testing.T) {
	for _, d := range manifests(t) {
		if d.typ.Kind != "EncryptionConfiguration" {
			continue
		}
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel() // each load waits out a KMS probe timeout
			loadEncryptionConfig(t, d)
		})
	}
}

// TestEncryptionConfigs checks that the samples agree with each other and
// with the static pod.
func TestEncryptionConfigs(t *testing.T) {
	endpointOf := map[string]string{} // provider name -> endpoint, across samples
	n := 0
	for _, d := range manifests(t) {
		if d.typ.Kind != "EncryptionConfiguration" {
			continue
		}
		n++
		t.Run(d.String(), func(t *testing.T) {
			var cfg apiserverv1.EncryptionConfiguration
			if err := yaml.UnmarshalStrict(d.raw, &cfg); err != nil {
				t.Fatalf("decode: %v", err)
			}
			for _, r := range cfg.Resources {
				if !slices.Contains(r.Resources, "secrets") {
					t.Errorf("resources %v do not include secrets", r.Resources)
				}
				for _, p := range r.Providers {
					if p.KMS == nil {
						continue
					}
					if p.KMS.APIVersion != "v2" {
						t.Errorf("kms provider %s: apiVersion %q, want v2", p.KMS.Name, p.KMS.APIVersion)
					}
					if !strings.HasPrefix(p.KMS.Endpoint, "unix:///var/run/kms-plugin/") {
						t.Errorf("kms provider %s: endpoint %q is outside /var/run/kms-plugin/, the directory the apiserver mounts", p.KMS.Name, p.KMS.Endpoint)
					}
					// The name is stored in every value's prefix: one name
					// must mean one plugin in every sample.
					if prev, ok := endpointOf[p.KMS.Name]; ok && prev != p.KMS.Endpoint {
						t.Errorf("kms provider %s: endpoint %q here, %q in another sample", p.KMS.Name, p.KMS.Endpoint, prev)
					}
					endpointOf[p.KMS.Name] = p.KMS.Endpoint
				}
			}
		})
	}
	if n < 4 {
		t.Errorf("found %d EncryptionConfiguration samples, want local, vault, identity-to-kms and local-to-vault", n)
	}
	// Each static pod listens where the samples' provider of its backend
	// calls, and the two health addresses differ, so that both plugins
	// can run on one node while Secrets move from one backend to the other.
	health := map[string]string{}
	for file, provider := range map[string]string{"kms-plugin.yaml": "kms-plugin", "kms-plugin-vault.yaml": "kms-plugin-vault"} {
		pod := pods(t)[filepath.Join("static-pod", file)]
		if pod == nil {
			t.Errorf("static-pod/%s is missing", file)
			continue
		}
		if got, want := flagValue(pod.Spec.Containers[0], "listen"), endpointOf[provider]; got != want {
			t.Errorf("static-pod/%s listens on %q, but the samples' %s provider calls %q", file, got, provider, want)
		}
		addr := flagValue(pod.Spec.Containers[0], "health-addr")
		if other, ok := health[addr]; ok {
			t.Errorf("static-pod/%s and %s both serve health on %s", file, other, addr)
		}
		health[addr] = file
	}
}

// loadEncryptionConfig runs kube-apiserver's LoadEncryptionConfig on d.
// The loader starts KMS health probes against the endpoint; with no plugin
// there they fail and are logged, which kube-apiserver also tolerates at
// startup. Only a config it rejects fails the test.
func loadEncryptionConfig(t *testing.T, d doc) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "encryption-config.yaml")
	if err := os.WriteFile(path, d.raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := encryptionconfig.LoadEncryptionConfig(ctx, path, false, "deploy-test")
	if err != nil {
		t.Fatalf("kube-apiserver would reject it: %v", err)
	}
	if len(cfg.Transformers) == 0 {
		t.Errorf("loaded with no transformers")
	}
}

func stripComments(b []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func first[T any](a, b *T) *T {
	if a != nil {
		return a
	}
	return b
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return strings.TrimSpace(strings.ReplaceAll(yamlString(*p), "\n", " "))
}

func yamlString(v any) string {
	b, _ := yaml.Marshal(v)
	return string(b)
}

func quantity(q resource.Quantity, ok bool) string {
	if !ok {
		return "unset"
	}
	return q.String()
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
