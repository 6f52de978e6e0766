//go:build release

// Package release checks that kms-plugin's release binaries are
// reproducible: the same commit, built twice in two different directories
// with two separate build caches, gives byte-identical binaries. A user can
// then rebuild a release from its tag and compare it with SHA256SUMS.
package release

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kms-plugin/kms-plugin/test/testbin"
)

func TestReleaseBinariesAreReproducible(t *testing.T) {
	root := testbin.RepoRoot()
	if out, err := exec.Command("git", "-C", root, "diff", "--quiet", "HEAD", "--", ".").CombinedOutput(); err != nil {
		t.Skipf("the work tree has uncommitted changes; the check builds the commit (git diff: %v %s)", err, out)
	}
	const version = "v0.0.0-reproducibility-check"
	var dists []string
	for i, cache := range []string{"", t.TempDir()} {
		clone := filepath.Join(t.TempDir(), "clone-"+string(rune('a'+i)))
		run(t, "", nil, "git", "clone", "--quiet", "--no-hardlinks", root, clone)
		dist := filepath.Join(clone, "dist")
		env := []string{"VERSION=" + version}
		if cache != "" {
			// A cold, separate build cache: nothing of the first build
			// is reused.
			env = append(env, "GOCACHE="+cache)
		}
		run(t, clone, env, "make", "--no-print-directory", "release-binaries", "RELEASE_PLATFORMS=linux/amd64", "DIST="+dist, "VERSION="+version)
		dists = append(dists, dist)
	}
	for _, bin := range []string{"kms-plugin", "kmsctl"} {
		a := read(t, filepath.Join(dists[0], "linux-amd64", bin))
		b := read(t, filepath.Join(dists[1], "linux-amd64", bin))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two builds of one commit: sha256 %x and %x", bin, sha256.Sum256(a), sha256.Sum256(b))
			continue
		}
		if !bytes.Contains(a, []byte(version)) {
			t.Errorf("%s does not carry its version %s", bin, version)
		}
		for _, leak := range []string{dists[0], dists[1], os.Getenv("HOME") + "/go/pkg/mod"} {
			if bytes.Contains(a, []byte(leak)) {
				t.Errorf("%s holds the build path %s: not built with -trimpath", bin, leak)
			}
		}
		t.Logf("%s: %d bytes, sha256 %x, identical in both builds", bin, len(a), sha256.Sum256(a))
	}
}

func run(t *testing.T, dir string, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
