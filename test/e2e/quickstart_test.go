//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/test/cluster"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// TestREADMEQuickstart follows the README's quickstart in a fresh clone,
// command for command: `make run` (with the README's ARGS for a busy
// health port), then every line of the block it says to run in another
// shell. So the README cannot drift from the code again.
func TestREADMEQuickstart(t *testing.T) {
	clone := filepath.Join(t.TempDir(), "kms-plugin")
	if out, err := exec.Command("git", "clone", "--quiet", testbin.RepoRoot(), clone).CombinedOutput(); err != nil {
		t.Fatalf("git clone: %v\n%s", err, out)
	}
	readme, err := os.ReadFile(filepath.Join(clone, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := quickstartBlocks(t, string(readme))
	if len(blocks) < 2 || !strings.HasPrefix(blocks[0][0], "make run") || !strings.HasPrefix(blocks[0][1], "make test") {
		t.Fatalf("the quickstart no longer starts with make run and make test: %q", blocks)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	health := l.Addr().String()
	_ = l.Close()
	env := append(os.Environ(), "XDG_STATE_HOME="+t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	var runLog bytes.Buffer
	run := exec.Command("make", "run", "ARGS=--health-addr "+health)
	run.Dir, run.Env, run.Stdout, run.Stderr = clone, env, &runLog, &runLog
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // make, go run and the plugin
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-run.Process.Pid, syscall.SIGTERM)
		_ = run.Wait()
	})
	err = cluster.Poll(ctx, time.Second, 8*time.Minute, "make run to serve /readyz", func(ctx context.Context) (bool, error) {
		if run.ProcessState != nil {
			return false, cluster.Permanent(os.ErrProcessDone)
		}
		c := exec.CommandContext(ctx, "curl", "-sf", "http://"+health+"/readyz")
		return c.Run() == nil, nil
	})
	if err != nil {
		t.Fatalf("%v\nmake run:\n%s", err, runLog.String())
	}

	script := "set -euo pipefail\n" + strings.ReplaceAll(strings.Join(blocks[1], "\n"), "127.0.0.1:8787", health)
	sh := exec.CommandContext(ctx, "bash", "-c", script)
	sh.Dir, sh.Env = clone, env
	out, err := sh.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's commands failed: %v\n%s\n--- script\n%s\n--- make run\n%s", err, out, script, runLog.String())
	}
	for _, want := range []string{"key_id:", "local:", "CHECK", "kms_plugin_current_key_info"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the README's commands printed no %q:\n%s", want, out)
		}
	}
	if n := strings.Count(string(out), "local:"); n < 2 {
		t.Errorf("keyring rotate printed no new key_id:\n%s", out)
	}
}

// quickstartBlocks returns the command lines (comments and blanks dropped)
// of each ```sh block in the README's Quickstart section.
func quickstartBlocks(t *testing.T, readme string) [][]string {
	t.Helper()
	_, section, ok := strings.Cut(readme, "\n## Quickstart\n")
	if !ok {
		t.Fatal("README has no Quickstart section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var blocks [][]string
	for {
		_, rest, ok := strings.Cut(section, "```sh\n")
		if !ok {
			return blocks
		}
		body, after, _ := strings.Cut(rest, "```")
		var lines []string
		for _, line := range strings.Split(body, "\n") {
			if i := strings.Index(line, " #"); i >= 0 {
				line = line[:i]
			}
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				lines = append(lines, line)
			}
		}
		blocks = append(blocks, lines)
		section = after
	}
}
