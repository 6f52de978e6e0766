package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// TestOperatorAdviceIsCurrent keeps the docs, the kind script and kmsctl's
// help on the tools kms-plugin ships: re-encrypting is kmsctl migrate and
// proving it kmsctl verify (not kubectl get | replace), and getting kmsctl
// onto a node does not assume Docker.
func TestOperatorAdviceIsCurrent(t *testing.T) {
	root := testbin.RepoRoot()
	read := func(rel string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	help, err := exec.Command(testbin.Build(t, "./cmd/kmsctl"), "vault", "retire", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("kmsctl vault retire --help: %v\n%s", err, help)
	}
	for name, text := range map[string]string{
		"docs/vault.md":              read("docs/vault.md"),
		"docs/security.md":           read("docs/security.md"),
		"deploy/kind/e2e.sh":         read("deploy/kind/e2e.sh"),
		"kmsctl vault retire --help": string(help),
	} {
		if strings.Contains(text, "kubectl replace") {
			t.Errorf("%s tells users to rewrite with kubectl replace; point at kmsctl migrate and kmsctl verify", name)
		}
		if name != "docs/security.md" && !strings.Contains(text, "kmsctl migrate") {
			t.Errorf("%s does not name kmsctl migrate", name)
		}
	}
	install := read("docs/install.md")
	if strings.Contains(install, "docker cp") || !strings.Contains(install, "ctr -n k8s.io images mount") {
		t.Errorf("docs/install.md must get kmsctl onto a containerd node without Docker")
	}
	if kind := read("deploy/kind/e2e.sh"); !strings.Contains(kind, `"$minor" -lt 34`) {
		t.Errorf("deploy/kind/e2e.sh no longer refuses a node image older than Kubernetes 1.34")
	}
}
