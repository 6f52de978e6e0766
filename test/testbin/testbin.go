// Package testbin finds or builds the binaries that kms-plugin's integration
// and end-to-end tests run: the project's own commands, built from the
// working tree, and the real servers (etcd, kube-apiserver,
// kube-controller-manager, Vault), built from the Go module proxy by
// test/tools/build.sh into a cache outside the repository, keyed by version.
package testbin

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// toolsCache is where test/tools/build.sh caches the servers, fixed when
// the package loads so that a test that changes HOME does not trigger a
// cold rebuild into a temporary home.
var toolsCache = func() string {
	if d := os.Getenv("KMS_PLUGIN_TOOLS_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "kms-plugin", "tools")
	}
	return ""
}()

// buildTags are the build tags of the project's binaries that Build makes:
// those of the test binary that calls it which change what a command
// ships (see tags_*.go), so that a test built with -tags pkcs11 runs a
// kms-plugin and a kmsctl that have the PKCS#11 provider.
var buildTags []string

var (
	mu      sync.Mutex
	tmpDir  string
	built   = map[string]string{}
	toolDir = map[string]string{}
)

// Main runs the package's tests and then removes what Build produced. Call
// it from TestMain in packages that use Build.
func Main(m *testing.M) int {
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	if tmpDir != "" {
		_ = os.RemoveAll(tmpDir)
	}
	return code
}

// RepoRoot returns the root of the kms-plugin repository.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Build compiles the project package pkg (such as "./cmd/kms-plugin") once
// per test process and returns the binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	if tmpDir == "" {
		d, err := os.MkdirTemp("", "kms-plugin-testbin-")
		if err != nil {
			t.Fatalf("create build dir: %v", err)
		}
		tmpDir = d
	}
	out := filepath.Join(tmpDir, filepath.Base(pkg))
	args := []string{"build"}
	if len(buildTags) > 0 {
		args = append(args, "-tags", strings.Join(buildTags, ","))
	}
	cmd := exec.Command("go", append(args, "-o", out, pkg)...)
	cmd.Dir = RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

// Tool returns the path of binary from the real server tool (etcd,
// kube-apiserver, kube-controller-manager or vault), building the tool
// first if the cache lacks it.
// A cold build takes minutes; later runs reuse the cache.
func Tool(t testing.TB, tool, binary string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	dir, ok := toolDir[tool]
	if !ok {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command("bash", filepath.Join(RepoRoot(), "test", "tools", "build.sh"), tool)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if toolsCache != "" {
			cmd.Env = append(os.Environ(), "KMS_PLUGIN_TOOLS_CACHE="+toolsCache)
		}
		if err := cmd.Run(); err != nil {
			t.Fatalf("build %s: %v\n%s", tool, err, stderr.String())
		}
		dir = strings.TrimSpace(stdout.String())
		toolDir[tool] = dir
	}
	p := filepath.Join(dir, binary)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s: %v", tool, fmt.Errorf("binary %s missing after build: %w", binary, err))
	}
	return p
}

// Result is what a command printed and how it ended.
type Result struct {
	Stdout, Stderr string
	// Err is the command's failure, such as a non-zero exit
	// (*exec.ExitError); nil when it exited 0.
	Err error
}

func (r Result) String() string {
	return fmt.Sprintf("err=%v\n--- stdout\n%s\n--- stderr\n%s", r.Err, r.Stdout, r.Stderr)
}

// Command runs argv (a binary and its first arguments, such as kmsctl with
// its connection flags) with args and returns what it printed. A non-zero
// exit is in Result.Err, not a test failure: the one way every harness runs
// kmsctl.
func Command(ctx context.Context, argv []string, args ...string) Result {
	full := append(append([]string{}, argv...), args...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return Result{Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
}
