package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// startPlugin runs the kms-plugin binary on endpoint with args and waits
// until it serves.
func startPlugin(t *testing.T, endpoint string, args ...string) *plugintest.Plugin {
	t.Helper()
	p, err := plugintest.Launch(t, endpoint, args...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func pluginStatus(t *testing.T, p *plugintest.Plugin) *kmsapi.StatusResponse {
	t.Helper()
	st, err := p.Client.Status(ctx3s(t), &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatalf("Status() = %v", err)
	}
	return st
}

// kmsctl runs the kmsctl binary and returns its output.
func kmsctl(t *testing.T, args ...string) string {
	t.Helper()
	return plugintest.MustKmsctl(t, args...)
}

// newKeyring creates a keyring with kmsctl in a fresh directory.
func newKeyring(t *testing.T) (dir, path string) {
	path = plugintest.NewKeyring(t)
	return filepath.Dir(path), path
}

func ctx3s(t *testing.T) context.Context { return plugintest.Ctx(t, 3*time.Second) }

func TestPluginServesContract(t *testing.T) {
	dir, keyring := newKeyring(t)
	sock := filepath.Join(dir, "run", "kms.sock")
	// A --listen in a directory that does not exist is refused, naming it.
	if _, err := plugintest.Launch(t, "unix://"+sock, "--keyring", keyring); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "run")+" does not exist") {
		t.Fatalf("--listen in a missing directory: %v, want a refusal naming it", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o750); err != nil {
		t.Fatal(err)
	}
	p := startPlugin(t, "unix://"+sock, "--keyring", keyring)

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want a 0600 socket", fi.Mode())
	}

	st := pluginStatus(t, p)
	if st.Version != "v2" || st.Healthz != "ok" || !strings.HasPrefix(st.KeyId, "local:") {
		t.Fatalf("Status() = %+v", st)
	}
	seed := bytes.Repeat([]byte{9}, 32)
	enc, err := p.Client.Encrypt(ctx3s(t), &kmsapi.EncryptRequest{Plaintext: seed, Uid: "it"})
	if err != nil {
		t.Fatal(err)
	}
	if enc.KeyId != st.KeyId || len(enc.Ciphertext) > 1024 {
		t.Errorf("Encrypt() key_id %q (Status %q), %d bytes", enc.KeyId, st.KeyId, len(enc.Ciphertext))
	}
	dec, err := p.Client.Decrypt(ctx3s(t), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
	if err != nil || !bytes.Equal(dec.Plaintext, seed) {
		t.Fatalf("Decrypt() = %v, %v", dec, err)
	}

	tampered := bytes.Clone(enc.Ciphertext)
	tampered[len(tampered)-1] ^= 1
	bad := []struct {
		name string
		req  *kmsapi.DecryptRequest
		want codes.Code
	}{
		{"tampered", &kmsapi.DecryptRequest{Ciphertext: tampered, KeyId: enc.KeyId}, codes.InvalidArgument},
		{"truncated", &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext[:10], KeyId: enc.KeyId}, codes.InvalidArgument},
		{"empty", &kmsapi.DecryptRequest{KeyId: enc.KeyId}, codes.InvalidArgument},
		{"oversized", &kmsapi.DecryptRequest{Ciphertext: make([]byte, 2048), KeyId: enc.KeyId}, codes.InvalidArgument},
		{"unknown version", &kmsapi.DecryptRequest{Ciphertext: append([]byte{7}, enc.Ciphertext[1:]...), KeyId: enc.KeyId}, codes.InvalidArgument},
		{"wrong key_id", &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId + "9"}, codes.InvalidArgument},
	}
	for _, c := range bad {
		_, err := p.Client.Decrypt(ctx3s(t), c.req)
		if got := status.Code(err); got != c.want {
			t.Errorf("Decrypt(%s) code = %v (%v), want %v", c.name, got, err, c.want)
		}
	}
	_, err = p.Client.Encrypt(ctx3s(t), &kmsapi.EncryptRequest{Plaintext: make([]byte, 1024)})
	if got := status.Code(err); got != codes.InvalidArgument {
		t.Errorf("Encrypt(1024 bytes) code = %v, want InvalidArgument", got)
	}

	for path, want := range map[string]int{"/livez": 200, "/readyz": 200, "/healthz": 200} {
		if code, body := p.Get(t, path); code != want {
			t.Errorf("GET %s = %d %q, want %d", path, code, body, want)
		}
	}
	_, metrics := p.Get(t, "/metrics")
	for _, want := range []string{
		`kms_plugin_requests_total{code="OK",method="Encrypt"} 1`,
		`kms_plugin_requests_total{code="InvalidArgument",method="Decrypt"}`,
		`kms_plugin_current_key_info{key_id="` + st.KeyId + `"} 1`,
		`kms_plugin_current_key_id_hash_info{key_id_hash="` + kms.KeyIDHash(st.KeyId) + `"} 1`,
		`kms_plugin_status_cache_age_seconds `,
		`kms_plugin_build_info{`,
		`kms_plugin_provider_duration_seconds_bucket{operation="decrypt",outcome="ok"`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(p.Logs.String(), string(seed)) {
		t.Errorf("logs contain the plaintext")
	}

	var res struct {
		Healthz string `json:"healthz"`
		KeyID   string `json:"key_id"`
	}
	out := kmsctl(t, "status", "--endpoint", p.Endpoint, "-o", "json")
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.KeyID != st.KeyId || res.Healthz != "ok" {
		t.Errorf("kmsctl status -o json = %q (%v), want key_id %q and healthz ok", out, err, st.KeyId)
	}
}

func TestPluginRotationAndReload(t *testing.T) {
	dir, keyring := newKeyring(t)
	p := startPlugin(t, "unix://"+filepath.Join(dir, "kms.sock"), "--keyring", keyring, "--keyring-reload-interval", "100ms")
	before := pluginStatus(t, p)
	enc, err := p.Client.Encrypt(ctx3s(t), &kmsapi.EncryptRequest{Plaintext: []byte("seed before rotation")})
	if err != nil {
		t.Fatal(err)
	}

	newID := strings.TrimSpace(kmsctl(t, "keyring", "rotate", "--keyring", keyring))
	if newID == before.KeyId || !strings.HasPrefix(newID, "local:") {
		t.Fatalf("kmsctl keyring rotate printed %q", newID)
	}
	plugintest.WaitFor(t, 10*time.Second, "Status to report "+newID, func() bool { return pluginStatus(t, p).KeyId == newID })
	dec, err := p.Client.Decrypt(ctx3s(t), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
	if err != nil || string(dec.Plaintext) != "seed before rotation" {
		t.Errorf("Decrypt(old) after rotation = %v, %v", dec, err)
	}
	enc2, err := p.Client.Encrypt(ctx3s(t), &kmsapi.EncryptRequest{Plaintext: []byte("seed after rotation")})
	if err != nil || enc2.KeyId != newID {
		t.Fatalf("Encrypt after rotation = %v, %v; want key_id %q", enc2, err, newID)
	}

	// A corrupt keyring never replaces the good one.
	good, _ := os.ReadFile(keyring)
	if err := os.WriteFile(keyring, good[:len(good)/3], 0o600); err != nil {
		t.Fatal(err)
	}
	plugintest.WaitFor(t, 10*time.Second, "/healthz to report the reload error", func() bool {
		code, body := p.Get(t, "/healthz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "keyring")
	})
	if code, _ := p.Get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d while serving the last good keyring, want 200", code)
	}
	if st := pluginStatus(t, p); st.KeyId != newID || st.Healthz != "ok" {
		t.Errorf("Status() with a corrupt file = %+v, want ok and %q", st, newID)
	}
	for _, e := range []*kmsapi.EncryptResponse{enc, enc2} {
		if _, err := p.Client.Decrypt(ctx3s(t), &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId}); err != nil {
			t.Errorf("Decrypt with a corrupt file on disk = %v", err)
		}
	}
	_, metrics := p.Get(t, "/metrics")
	if !strings.Contains(metrics, `kms_plugin_keyring_reloads_total{result="error"}`) || !strings.Contains(metrics, "kms_plugin_degraded 1") {
		t.Errorf("/metrics does not show the failed reload")
	}
	if err := os.WriteFile(keyring, good, 0o600); err != nil {
		t.Fatal(err)
	}
	plugintest.WaitFor(t, 10*time.Second, "/healthz to recover", func() bool {
		code, _ := p.Get(t, "/healthz")
		return code == http.StatusOK
	})
}

func TestPluginSocketLifecycle(t *testing.T) {
	dir, keyring := newKeyring(t)
	sock := filepath.Join(dir, "kms.sock")

	// A stale socket file from a dead process is replaced.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = l.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	p := startPlugin(t, "unix://"+sock, "--keyring", keyring)
	pluginStatus(t, p)

	// A second instance never steals a live socket.
	_, err = plugintest.Launch(t, "unix://"+sock, "--keyring", keyring)
	if err == nil || !strings.Contains(err.Error(), "another kms-plugin process") {
		t.Fatalf("second instance on a live socket: %v, want a refusal naming the other process", err)
	}
	pluginStatus(t, p)

	// A live server that is not kms-plugin (no lock file) is not stolen either.
	other := filepath.Join(dir, "other.sock")
	ol, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	defer ol.Close()
	go func() {
		for {
			c, err := ol.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	_, err = plugintest.Launch(t, "unix://"+other, "--keyring", keyring)
	if err == nil || !strings.Contains(err.Error(), "already serving") {
		t.Fatalf("instance on another server's socket: %v, want a refusal", err)
	}

	// SIGTERM: graceful exit (status 0), socket removed.
	p.Stop(t)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket still present after SIGTERM: %v", err)
	}

	// After SIGKILL the socket stays; the next start replaces it.
	p2 := startPlugin(t, "unix://"+sock, "--keyring", keyring)
	p2.Kill()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("socket gone after SIGKILL (%v); the stale case is not exercised", err)
	}
	p3 := startPlugin(t, "unix://"+sock, "--keyring", keyring)
	pluginStatus(t, p3)
}

func TestPluginAbstractSocketAndModes(t *testing.T) {
	_, keyring := newKeyring(t)
	name := "kms-plugin-test-" + filepath.Base(t.TempDir())
	p := startPlugin(t, "unix:///@"+name, "--keyring", keyring)
	if st := pluginStatus(t, p); st.Healthz != "ok" {
		t.Errorf("Status over an abstract socket = %+v", st)
	}

	dir := t.TempDir()
	sock := filepath.Join(dir, "wide.sock")
	startPlugin(t, "unix://"+sock, "--keyring", keyring, "--socket-mode", "0660", "--socket-group", "0")
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode with --socket-mode 0660 = %#o", fi.Mode().Perm())
	}
}

func TestPluginRefusesUnsafeKeyring(t *testing.T) {
	dir, keyring := newKeyring(t)
	if err := os.Chmod(keyring, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := plugintest.Launch(t, "unix://"+filepath.Join(dir, "kms.sock"), "--keyring", keyring)
	if err == nil || !strings.Contains(err.Error(), "mode 0644") {
		t.Errorf("plugin on a 0644 keyring: %v, want a refusal naming the mode", err)
	}
}

func TestPluginDevMode(t *testing.T) {
	state := t.TempDir()
	p := startPlugin(t, "unix://"+filepath.Join(state, "dev.sock"), "--dev", "--state-dir", state)
	if st := pluginStatus(t, p); st.Healthz != "ok" {
		t.Errorf("Status in dev mode = %+v", st)
	}
	if !strings.Contains(p.Logs.String(), "DEVELOPMENT MODE") {
		t.Errorf("dev mode did not warn loudly")
	}
	fi, err := os.Stat(filepath.Join(state, "keyring.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("dev keyring: %v, mode %v; want a 0600 file", err, fi)
	}

	// --dev with --keyring elsewhere: the warning names that keyring, and
	// no keyring appears in the state directory.
	other := filepath.Join(t.TempDir(), "mine.json")
	state2 := t.TempDir()
	p2 := startPlugin(t, "unix://"+filepath.Join(state2, "dev.sock"), "--dev", "--state-dir", state2, "--keyring", other)
	if !strings.Contains(p2.Logs.String(), other) {
		t.Errorf("dev mode with --keyring %s does not name it:\n%s", other, p2.Logs.String())
	}
	if _, err := os.Stat(filepath.Join(state2, "keyring.json")); err == nil {
		t.Errorf("dev mode with --keyring made a keyring in the state directory too")
	}
}

func TestKmsctlBenchAgainstPlugin(t *testing.T) {
	dir, keyring := newKeyring(t)
	p := startPlugin(t, "unix://"+filepath.Join(dir, "kms.sock"), "--keyring", keyring, "--log-level", "info")
	out := kmsctl(t, "bench", "--endpoint", p.Endpoint, "--op", "roundtrip", "--baseline",
		"--duration", "300ms", "--warmup", "50ms", "--rounds", "2", "--concurrency", "4", "-o", "json")
	var rep struct {
		Rounds   []struct{ Ops, Errors int64 } `json:"rounds"`
		Baseline []struct{ Ops, Errors int64 } `json:"baseline"`
		Ratios   map[string]struct {
			Median, Min, Max float64
		} `json:"ratios"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("kmsctl bench -o json: %v\n%s", err, out)
	}
	if len(rep.Rounds) != 2 || len(rep.Baseline) != 2 {
		t.Fatalf("bench ran %d plugin and %d floor rounds, want 2 and 2", len(rep.Rounds), len(rep.Baseline))
	}
	for i := range rep.Rounds {
		if rep.Rounds[i].Ops == 0 || rep.Rounds[i].Errors != 0 || rep.Baseline[i].Ops == 0 || rep.Baseline[i].Errors != 0 {
			t.Errorf("round %d: plugin %+v, floor %+v; want calls and no errors", i+1, rep.Rounds[i], rep.Baseline[i])
		}
	}
	for _, name := range []string{"ops_per_sec", "p50", "p99"} {
		r, ok := rep.Ratios[name]
		if !ok || r.Median <= 0 || r.Min > r.Median || r.Median > r.Max {
			t.Errorf("ratio %s = %+v, want a positive median within [min, max]", name, r)
		}
	}
}

// TestPluginKeyringReplacedByFIFO: the keyring path becomes a FIFO while
// the plugin runs. The reload refuses it without blocking, the last good
// keyring keeps serving, and SIGTERM still stops the plugin.
func TestPluginKeyringReplacedByFIFO(t *testing.T) {
	dir, keyring := newKeyring(t)
	p := startPlugin(t, "unix://"+filepath.Join(dir, "kms.sock"), "--keyring", keyring, "--keyring-reload-interval", "50ms")
	keyID := pluginStatus(t, p).KeyId
	if err := os.Rename(keyring, keyring+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(keyring, 0o600); err != nil {
		t.Fatal(err)
	}
	plugintest.WaitFor(t, 10*time.Second, "the reload to refuse the FIFO", func() bool {
		return strings.Contains(p.Logs.String(), "not a regular file")
	})
	seed := bytes.Repeat([]byte{7}, 32)
	enc, err := p.Client.Encrypt(ctx3s(t), &kmsapi.EncryptRequest{Plaintext: seed, Uid: "fifo"})
	if err != nil || enc.KeyId != keyID {
		t.Fatalf("Encrypt() with a FIFO at the keyring path = %v, %v; want the last good key %s", enc, err, keyID)
	}
	p.Stop(t)
}

// TestKmsctlRootThenNonRoot follows docs/install.md on a node: the
// plugin's user (65532) creates the keyring, root rotates it through a
// symbolic link and adds a version through the real path, and the
// documented non-root run
// (setpriv --reuid 65532 kmsctl keyring rotate) still works afterwards.
func TestKmsctlRootThenNonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running as another user needs root (CI runs as root)")
	}
	const uid = 65532
	shared := func(mode os.FileMode) string {
		d, err := os.MkdirTemp("", "kms-plugin-nonroot-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(d) })
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		return d
	}
	binDir := shared(0o755)
	kmsctlBin := filepath.Join(binDir, "kmsctl")
	b, err := os.ReadFile(testbin.Build(t, "./cmd/kmsctl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kmsctlBin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := shared(0o700)
	if err := os.Chown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
	keyring := filepath.Join(dir, "keyring.json")
	link := filepath.Join(shared(0o755), "keyring.json")
	if err := os.Symlink(keyring, link); err != nil {
		t.Fatal(err)
	}
	run := func(asPlugin bool, args ...string) {
		t.Helper()
		cmd := exec.Command(kmsctlBin, args...)
		if asPlugin {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kmsctl %s (as uid %d): %v\n%s", strings.Join(args, " "), map[bool]int{true: uid, false: 0}[asPlugin], err, out)
		}
	}
	run(true, "keyring", "init", "--keyring", keyring)
	run(false, "keyring", "rotate", "--keyring", link)
	run(false, "keyring", "add", "--keyring", keyring)
	run(true, "keyring", "rotate", "--keyring", keyring)

	fi, err := os.Lstat(keyring)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("keyring after root and non-root runs: uid %d, mode %v; want a 0600 regular file of uid %d", st.Uid, fi.Mode(), uid)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Errorf("the link after root's run: %v, %v; want it still a link", fi, err)
	}
	cmd := exec.Command(kmsctlBin, "keyring", "list", "--keyring", keyring)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Count(string(out), "local:") != 4 {
		t.Errorf("keyring list as the plugin's user: %v\n%s\nwant 4 versions", err, out)
	}
}

// TestAdminAPIReportsWhatIsLoaded: kmsctl status shows, through the admin
// API on the KMS socket, the versions the plugin holds with the check
// values of the keyring file, and a refused reload's error; it never shows
// key bytes.
func TestAdminAPIReportsWhatIsLoaded(t *testing.T) {
	dir, keyring := newKeyring(t)
	endpoint := "unix://" + filepath.Join(dir, "kms.sock")
	startPlugin(t, endpoint, "--keyring", keyring, "--keyring-reload-interval", "50ms")
	kmsctl(t, "keyring", "add", "--keyring", keyring)
	file := kmsctl(t, "keyring", "list", "--keyring", keyring, "-o", "json")
	var want []struct {
		Version int64  `json:"version"`
		KeyID   string `json:"key_id"`
		Check   string `json:"check"`
	}
	if err := json.Unmarshal([]byte(file), &want); err != nil || len(want) != 2 {
		t.Fatalf("keyring list: %v\n%s", err, file)
	}
	type loaded struct {
		KeyID  string `json:"key_id"`
		Loaded struct {
			Provider        string `json:"provider"`
			CurrentKeyID    string `json:"current_key_id"`
			LastReloadError string `json:"last_reload_error"`
			ReloadInterval  string `json:"reload_interval"`
			Versions        []struct {
				Version int64  `json:"version"`
				KeyID   string `json:"key_id"`
				Check   string `json:"check"`
				State   string `json:"state"`
			} `json:"versions"`
		} `json:"loaded"`
	}
	status := func() loaded {
		t.Helper()
		out := kmsctl(t, "status", "--endpoint", endpoint, "-o", "json")
		var l loaded
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			t.Fatalf("status -o json: %v\n%s", err, out)
		}
		return l
	}
	plugintest.WaitFor(t, 10*time.Second, "the plugin to load version 2", func() bool { return len(status().Loaded.Versions) == 2 })
	l := status()
	if l.Loaded.Provider != "local" || l.Loaded.CurrentKeyID != l.KeyID || l.Loaded.ReloadInterval != "50ms" {
		t.Errorf("status = %+v; want provider local, current key %s, reload interval 50ms", l.Loaded, l.KeyID)
	}
	for i, v := range l.Loaded.Versions {
		if v.Version != want[i].Version || v.KeyID != want[i].KeyID || v.Check != want[i].Check || len(v.Check) != 16 {
			t.Errorf("loaded version %+v, want the file's %+v", v, want[i])
		}
	}
	if l.Loaded.Versions[1].State != "active" {
		t.Errorf("version 2 is %s, want active", l.Loaded.Versions[1].State)
	}

	// A refused reload shows up, and the table says so too.
	if err := os.Chmod(keyring, 0o644); err != nil {
		t.Fatal(err)
	}
	plugintest.WaitFor(t, 10*time.Second, "the reload error in the admin API", func() bool { return strings.Contains(status().Loaded.LastReloadError, "mode") })
	table := kmsctl(t, "status", "--endpoint", endpoint)
	for _, s := range []string{"provider:", "local", "reload error:", "CHECK", want[1].Check} {
		if !strings.Contains(table, s) {
			t.Errorf("status table lacks %q:\n%s", s, table)
		}
	}
	raw, err := os.ReadFile(keyring)
	if err != nil {
		t.Fatal(err)
	}
	var ring struct {
		Versions []struct {
			Key string `json:"key"`
		} `json:"versions"`
	}
	if err := json.Unmarshal(raw, &ring); err != nil {
		t.Fatal(err)
	}
	for _, v := range ring.Versions {
		if strings.Contains(table, v.Key) || strings.Contains(table, v.Key[:12]) {
			t.Errorf("status shows key bytes")
		}
	}
}

// TestFlagsCheckedBeforeSideEffects: a bad --socket-group or a relative
// --state-dir is refused before any keyring, directory or port is made.
func TestFlagsCheckedBeforeSideEffects(t *testing.T) {
	dir := t.TempDir()
	port, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := port.Addr().String()
	_ = port.Close()
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown group", []string{"--dev", "--state-dir", filepath.Join(dir, "a"), "--socket-group", "no-such-group-kms", "--health-addr", addr}, "--socket-group"},
		{"relative state dir", []string{"--dev", "--state-dir", "relative/state", "--health-addr", addr}, "--state-dir"},
	}
	for _, c := range cases {
		out, err := exec.Command(testbin.Build(t, "./cmd/kms-plugin"), c.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%s: kms-plugin %v = %v\n%s\nwant a refusal naming %s", c.name, c.args, err, out, c.want)
		}
		if strings.Contains(string(out), "serving health") {
			t.Errorf("%s: the health server started before the refusal:\n%s", c.name, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); err == nil {
		t.Errorf("the state directory was created although --socket-group was refused")
	}
	if _, err := os.Stat("relative"); err == nil {
		t.Errorf("a relative state directory was created")
	}
}

// TestFlagsFromEnvironment: every flag can come from KMS_PLUGIN_<FLAG>, as
// a static pod or systemd unit may prefer, and the command line wins.
func TestFlagsFromEnvironment(t *testing.T) {
	dir, keyring := newKeyring(t)
	t.Setenv("KMS_PLUGIN_KEYRING", keyring)
	t.Setenv("KMS_PLUGIN_KEYRING_RELOAD_INTERVAL", "250ms")
	t.Setenv("KMS_PLUGIN_LOG_LEVEL", "not-a-level") // overridden on the command line below
	p := startPlugin(t, "unix://"+filepath.Join(dir, "kms.sock"), "--log-level", "debug")
	if st := pluginStatus(t, p); !strings.HasPrefix(st.KeyId, "local:") {
		t.Fatalf("Status() = %+v; want the keyring named by KMS_PLUGIN_KEYRING", st)
	}
	out := kmsctl(t, "status", "--endpoint", "unix://"+filepath.Join(dir, "kms.sock"), "-o", "json")
	if !strings.Contains(out, `"reload_interval": "250ms"`) {
		t.Errorf("KMS_PLUGIN_KEYRING_RELOAD_INTERVAL was not applied:\n%s", out)
	}

	help, err := exec.Command(testbin.Build(t, "./cmd/kms-plugin"), "--help").Output()
	if err != nil || !strings.Contains(string(help), "--keyring-reload-interval") || !strings.Contains(string(help), "KMS_PLUGIN_") {
		t.Errorf("kms-plugin --help on stdout = %v\n%s\nwant the flags, as --flag, and the environment rule", err, help)
	}
}
