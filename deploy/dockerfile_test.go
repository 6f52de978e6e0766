package deploy_test

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// dockerfile returns the Dockerfile's instructions, one per element with
// line continuations joined and comments dropped.
func dockerfile(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testbin.RepoRoot(), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	cur := ""
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == "" && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if c, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur += c + " "
			continue
		}
		out = append(out, cur+trimmed)
		cur = ""
	}
	return out
}

// TestDockerfileBuild runs the Dockerfile's go build command outside Docker
// (CI has no engine) and checks that it yields static binaries that print
// the version passed in, and that the final stage is distroless non-root.
func TestDockerfileBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both commands with the Dockerfile's flags")
	}
	var build string
	var final []string
	for _, ins := range dockerfile(t) {
		if strings.HasPrefix(ins, "FROM ") {
			final = nil
		}
		final = append(final, ins)
		if strings.HasPrefix(ins, "RUN ") && strings.Contains(ins, "go build") {
			if build != "" {
				t.Fatalf("more than one go build RUN in the Dockerfile")
			}
			build = ins
		}
	}
	if build == "" {
		t.Fatal("no RUN with go build in the Dockerfile")
	}
	// Drop RUN and its BuildKit options (--mount=...) to get the shell command.
	fields := strings.Fields(strings.TrimPrefix(build, "RUN "))
	for len(fields) > 0 && strings.HasPrefix(fields[0], "--") {
		fields = fields[1:]
	}
	command := strings.Join(fields, " ")
	if !strings.Contains(command, "CGO_ENABLED=0") {
		t.Errorf("build command does not set CGO_ENABLED=0: %s", command)
	}

	out := t.TempDir()
	version := fmt.Sprintf("v0.0.0-dockerfile-test-%d", time.Now().UnixNano())
	cmd := exec.Command("sh", "-c", command)
	cmd.Dir = testbin.RepoRoot()
	cmd.Env = append(os.Environ(), "VERSION="+version, "TARGETOS="+runtime.GOOS, "TARGETARCH="+runtime.GOARCH, "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("Dockerfile build command failed: %v\n%s\n%s", err, command, b)
	}

	for _, name := range []string{"kms-plugin", "kmsctl"} {
		bin := filepath.Join(out, name)
		checkStatic(t, bin)
		got, err := exec.Command(bin, "--version").CombinedOutput()
		if err != nil {
			t.Errorf("%s --version: %v\n%s", name, err, got)
			continue
		}
		if !strings.Contains(string(got), version) {
			t.Errorf("%s --version = %q, want it to contain %q", name, strings.TrimSpace(string(got)), version)
		}
	}

	finalStage := strings.Join(final, "\n")
	if !regexp.MustCompile(`(?m)^FROM gcr\.io/distroless/static[\w.-]*:nonroot`).MatchString(finalStage) {
		t.Errorf("final stage is not distroless static nonroot:\n%s", finalStage)
	}
	user := regexp.MustCompile(`(?m)^USER (\S+)`).FindStringSubmatch(finalStage)
	if user == nil || user[1] == "root" || strings.HasPrefix(user[1], "0") {
		t.Errorf("final stage USER = %v, want a non-root user", user)
	}
	for _, name := range []string{"kms-plugin", "kmsctl"} {
		if !strings.Contains(finalStage, "/out/"+name) {
			t.Errorf("final stage does not copy %s", name)
		}
	}
}

// checkStatic fails unless bin is an ELF executable with no program
// interpreter and no shared libraries, as distroless/static requires.
func checkStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Errorf("%s: %v", bin, err)
		return
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a program interpreter: dynamically linked", filepath.Base(bin))
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Errorf("%s: read imported libraries: %v", filepath.Base(bin), err)
	}
	if len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", filepath.Base(bin), libs)
	}
}

// TestDockerfileGoVersion: the image is built with the patched Go toolchain
// that go.mod pins, not an older one, and BuildKit's syntax is declared for
// its RUN --mount caches.
func TestDockerfileGoVersion(t *testing.T) {
	mod, err := os.ReadFile(filepath.Join(testbin.RepoRoot(), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var toolchain string
	for _, line := range strings.Split(string(mod), "\n") {
		if v, ok := strings.CutPrefix(line, "toolchain go"); ok {
			toolchain = strings.TrimSpace(v)
		}
	}
	if toolchain == "" {
		t.Fatal("go.mod has no toolchain line: pin a patched Go toolchain")
	}
	var arg string
	for _, ins := range dockerfile(t) {
		if v, ok := strings.CutPrefix(ins, "ARG GO_VERSION="); ok {
			arg = v
		}
	}
	if arg != toolchain {
		t.Errorf("Dockerfile builds with Go %q, go.mod pins toolchain go%s: keep them in step", arg, toolchain)
	}
	raw, err := os.ReadFile(filepath.Join(testbin.RepoRoot(), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(raw), "# syntax=docker/dockerfile:1\n") {
		t.Errorf("the Dockerfile uses RUN --mount without a leading # syntax=docker/dockerfile:1 line")
	}
}

// TestDockerfilePKCS11Stage checks the PKCS#11 variant: built by the
// Makefile's build-pkcs11 (which CI runs) on Debian 12, shipped on the
// glibc distroless base of the same Debian as non-root, and not the
// default target.
func TestDockerfilePKCS11Stage(t *testing.T) {
	stages := map[string][]string{}
	var order []string
	cur := ""
	for _, ins := range dockerfile(t) {
		if strings.HasPrefix(ins, "FROM ") {
			f := strings.Fields(ins)
			cur = f[len(f)-1]
			if len(f) < 4 || !strings.EqualFold(f[len(f)-2], "AS") {
				cur = "(default)"
			}
			order = append(order, cur)
		}
		stages[cur] = append(stages[cur], ins)
	}
	if len(order) == 0 || order[len(order)-1] != "(default)" {
		t.Fatalf("stages %v: the default (static) image must stay the last, unnamed stage", order)
	}
	build := strings.Join(stages["build-pkcs11"], "\n")
	if !regexp.MustCompile(`(?m)^FROM golang:\$\{GO_VERSION\}-bookworm AS build-pkcs11$`).MatchString(build) {
		t.Errorf("build-pkcs11 stage is not built on golang:${GO_VERSION}-bookworm:\n%s", build)
	}
	if !regexp.MustCompile(`(?m)^RUN .*make build-pkcs11 VERSION=\$\{VERSION\} BIN=/out$`).MatchString(build) {
		t.Errorf("build-pkcs11 stage does not run make build-pkcs11:\n%s", build)
	}
	final := strings.Join(stages["pkcs11"], "\n")
	if !regexp.MustCompile(`(?m)^FROM gcr\.io/distroless/base-debian12:nonroot AS pkcs11$`).MatchString(final) {
		t.Errorf("pkcs11 stage is not distroless base-debian12 nonroot:\n%s", final)
	}
	if !strings.Contains(final, "COPY --from=build-pkcs11 /out/pkcs11/kms-plugin /out/pkcs11/kmsctl /usr/local/bin/") {
		t.Errorf("pkcs11 stage does not copy the binaries make build-pkcs11 writes:\n%s", final)
	}
	if user := regexp.MustCompile(`(?m)^USER (\S+)`).FindStringSubmatch(final); user == nil || user[1] != "65532:65532" {
		t.Errorf("pkcs11 stage USER = %v, want 65532:65532 (distroless nonroot)", user)
	}
	mk, err := os.ReadFile(filepath.Join(testbin.RepoRoot(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^build-pkcs11:.*\n\tCGO_ENABLED=1 go build -tags pkcs11 .* -o \$\(BIN\)/pkcs11/ `).Match(mk) {
		t.Error("Makefile's build-pkcs11 does not build with -tags pkcs11 into $(BIN)/pkcs11/, where the Dockerfile copies from")
	}
}
