package deploy

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

const systemdUnit = "systemd/kms-plugin.service"

// unitKeys reads a unit file into key -> values (a key may repeat).
func unitKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not key=value", path, line)
		}
		keys[k] = append(keys[k], v)
	}
	return keys
}

// TestSystemdUnitIsHardened checks the unit's promises: a dedicated
// non-root user, no privileges, a read-only system with only the keyring's
// and the socket's directories writable, made by systemd with tight modes,
// and no ordering after anything the apiserver serves.
func TestSystemdUnitIsHardened(t *testing.T) {
	keys := unitKeys(t, systemdUnit)
	for key, want := range map[string]string{
		"User":                  "kms-plugin",
		"Group":                 "kms-plugin",
		"NoNewPrivileges":       "yes",
		"CapabilityBoundingSet": "",
		"ProtectSystem":         "strict",
		"ProtectHome":           "yes",
		"PrivateTmp":            "yes",
		"StateDirectory":        "kms-plugin",
		"StateDirectoryMode":    "0700",
		"RuntimeDirectory":      "kms-plugin",
		"RuntimeDirectoryMode":  "0750",
		"UMask":                 "0077",
		"Restart":               "always",
		"LimitCORE":             "0",
	} {
		if got := keys[key]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	for _, after := range strings.Fields(strings.Join(keys["After"], " ")) {
		if strings.Contains(after, "kube") || strings.Contains(after, "k3s") || strings.Contains(after, "rke2") {
			t.Errorf("After=%s: the plugin must start before kube-apiserver, not after it", after)
		}
	}
	args := strings.Fields(keys["ExecStart"][0])
	for i, a := range args {
		if strings.HasPrefix(a, "/") && i > 0 && !strings.HasPrefix(a, "/var/lib/kms-plugin/") {
			t.Errorf("ExecStart names %s, outside StateDirectory: ProtectSystem=strict would make it read-only", a)
		}
		if strings.HasPrefix(a, "unix:///") && !strings.HasPrefix(a, "unix:///run/kms-plugin/") {
			t.Errorf("ExecStart listens on %s, outside RuntimeDirectory", a)
		}
	}
}

// TestSystemdUnitVerifies runs systemd-analyze verify on the unit (with
// ExecStart pointing at a built kms-plugin): any warning fails.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	bin := testbin.Build(t, "./cmd/kms-plugin")
	src, err := os.ReadFile(systemdUnit)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "kms-plugin.service")
	if err := os.WriteFile(unit, []byte(strings.Replace(string(src), "/usr/local/bin/kms-plugin", bin, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestSystemdUnitCommandLineServes starts kms-plugin with the unit's exact
// ExecStart and an environment file as the unit reads it, with systemd's
// directories (/var/lib/kms-plugin, /run/kms-plugin) moved into a
// temporary directory and the health port moved to a free one, after the
// install steps the unit's header gives. It must serve a healthy Status on
// a 0600 socket, take flags from the environment file, and stop cleanly on
// SIGTERM (systemd's stop) within TimeoutStopSec, removing its socket.
func TestSystemdUnitCommandLineServes(t *testing.T) {
	keys := unitKeys(t, systemdUnit)
	bin := testbin.Build(t, "./cmd/kms-plugin")
	kmsctl := testbin.Build(t, "./cmd/kmsctl")
	root := t.TempDir()
	state, run := filepath.Join(root, "state"), filepath.Join(root, "run")
	for _, d := range []string{state, run} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	health := l.Addr().String()
	l.Close()
	moved := strings.NewReplacer("/usr/local/bin/kms-plugin", bin, "/var/lib/kms-plugin", state, "/run/kms-plugin", run, "127.0.0.1:8787", health)
	args := strings.Fields(moved.Replace(keys["ExecStart"][0]))

	keyring := moved.Replace("/var/lib/kms-plugin/keyring.json")
	if out, err := exec.Command(kmsctl, "keyring", "init", "--keyring", keyring).CombinedOutput(); err != nil {
		t.Fatalf("kmsctl keyring init (the unit's install step): %v\n%s", err, out)
	}
	envFile := filepath.Join(root, "kms-plugin.env")
	if err := os.WriteFile(envFile, []byte("KMS_PLUGIN_LOG_FORMAT=json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(keys["EnvironmentFile"][0], "-/etc/kms-plugin/") {
		t.Fatalf("EnvironmentFile = %q: the test writes its own in its place", keys["EnvironmentFile"])
	}
	env, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(args[0], args[1:]...)
	// systemd starts services with a near-empty environment, plus the file.
	cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, strings.Fields(string(env))...)
	logs := &plugintest.Buffer{}
	cmd.Stderr = logs
	old := syscall.Umask(0o077) // UMask=0077
	err = cmd.Start()
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	endpoint := moved.Replace("unix:///run/kms-plugin/kms.sock")
	client, conn, err := kms.Dial(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var st *kmsapi.StatusResponse
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err = client.Status(ctx, &kmsapi.StatusRequest{})
		cancel()
		if err == nil && st.GetHealthz() == "ok" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the unit's command line does not serve a healthy Status: %v %v\n%s", st, err, logs)
		}
	}
	sock := strings.TrimPrefix(endpoint, "unix://")
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s: %v, mode %v; want 0600", sock, err, fi.Mode().Perm())
	}
	if !strings.Contains(logs.String(), `"msg":"serving KMS v2"`) {
		t.Errorf("KMS_PLUGIN_LOG_FORMAT=json from the environment file did not apply:\n%s", logs)
	}

	stop, err := time.ParseDuration(keys["TimeoutStopSec"][0])
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("kms-plugin exited with %v on SIGTERM, want 0 (Restart=always would restart it)\n%s", err, logs)
		}
	case <-time.After(stop):
		t.Fatalf("kms-plugin did not stop within TimeoutStopSec=%s", stop)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after stop: %v", err)
	}
}
