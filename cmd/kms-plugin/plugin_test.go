package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// plugin is a running kms-plugin process.
type plugin struct {
	cmd        *exec.Cmd
	endpoint   string
	healthAddr string
	client     kmsapi.KeyManagementServiceClient
	logs       *syncBuffer
	exited     chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startPlugin runs the kms-plugin binary with args plus a JSON logger and an
// ephemeral health port, and waits until it serves.
func startPlugin(t *testing.T, endpoint string, args ...string) *plugin {
	t.Helper()
	p, err := launch(t, endpoint, args...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func launch(t *testing.T, endpoint string, args ...string) (*plugin, error) {
	t.Helper()
	bin := testbin.Build(t, "./cmd/kms-plugin")
	args = append([]string{"--listen", endpoint, "--health-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "debug", "--health-interval", "200ms"}, args...)
	cmd := exec.Command(bin, args...)
	pr, pw := io.Pipe()
	logs := &syncBuffer{}
	cmd.Stderr = io.MultiWriter(pw, logs)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &plugin{cmd: cmd, endpoint: endpoint, logs: logs, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait(); _ = pw.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("kms-plugin logs:\n%s", logs.String())
		}
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			switch line.Msg {
			case "serving health and metrics":
				p.healthAddr = line.Addr
			case "serving KMS v2":
				close(ready)
				_, _ = io.Copy(io.Discard, pr)
				return
			}
		}
	}()
	select {
	case <-ready:
	case err := <-p.exited:
		return nil, &exitError{err: err, logs: logs.String()}
	case <-time.After(30 * time.Second):
		return nil, &exitError{logs: "timed out waiting for the plugin to serve\n" + logs.String()}
	}
	client, conn, err := kms.Dial(endpoint)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = conn.Close() })
	p.client = client
	return p, nil
}

type exitError struct {
	err  error
	logs string
}

func (e *exitError) Error() string { return "kms-plugin exited: " + errString(e.err) + "\n" + e.logs }

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func (p *plugin) status(t *testing.T) *kmsapi.StatusResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := p.client.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatalf("Status() = %v", err)
	}
	return st
}

func (p *plugin) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + p.healthAddr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// kmsctl runs the kmsctl binary and returns its stdout.
func kmsctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(testbin.Build(t, "./cmd/kmsctl"), args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("kmsctl %v: %v\n%s", args, err, stderr)
	}
	return string(out)
}

// newKeyring creates a keyring with kmsctl in a fresh directory.
func newKeyring(t *testing.T) (dir, path string) {
	dir = t.TempDir()
	path = filepath.Join(dir, "keyring.json")
	kmsctl(t, "keyring", "init", "--keyring", path)
	return dir, path
}

func ctx3s(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPluginServesContract(t *testing.T) {
	dir, keyring := newKeyring(t)
	sock := filepath.Join(dir, "run", "kms.sock")
	p := startPlugin(t, "unix://"+sock, "--keyring", keyring)

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want a 0600 socket", fi.Mode())
	}

	st := p.status(t)
	if st.Version != "v2" || st.Healthz != "ok" || !strings.HasPrefix(st.KeyId, "local:") {
		t.Fatalf("Status() = %+v", st)
	}
	seed := bytes.Repeat([]byte{9}, 32)
	enc, err := p.client.Encrypt(ctx3s(t), &kmsapi.EncryptRequest{Plaintext: seed, Uid: "it"})
	if err != nil {
		t.Fatal(err)
	}
	if enc.KeyId != st.KeyId || len(enc.Ciphertext) > 1024 {
		t.Errorf("Encrypt() key_id %q (Status %q), %d bytes", enc.KeyId, st.KeyId, len(enc.Ciphertext))
	}
	dec, err := p.client.Decrypt(ctx3s(t), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
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
		_, err := p.client.Decrypt(ctx3s(t), c.req)
		if got := status.Code(err); got != c.want {
			t.Errorf("Decrypt(%s) code = %v (%v), want %v", c.name, got, err, c.want)
		}
	}
	_, err = p.client.Encrypt(ctx3s(t), &kmsapi.EncryptRequest{Plaintext: make([]byte, 1024)})
	if got := status.Code(err); got != codes.InvalidArgument {
		t.Errorf("Encrypt(1024 bytes) code = %v, want InvalidArgument", got)
	}

	for path, want := range map[string]int{"/livez": 200, "/readyz": 200, "/healthz": 200} {
		if code, body := p.get(t, path); code != want {
			t.Errorf("GET %s = %d %q, want %d", path, code, body, want)
		}
	}
	_, metrics := p.get(t, "/metrics")
	for _, want := range []string{
		`kms_plugin_requests_total{code="OK",method="Encrypt"} 1`,
		`kms_plugin_requests_total{code="InvalidArgument",method="Decrypt"}`,
		`kms_plugin_current_key_info{key_id="` + st.KeyId + `"} 1`,
		`kms_plugin_build_info{`,
		`kms_plugin_provider_duration_seconds_bucket{operation="decrypt",outcome="OK"`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(p.logs.String(), string(seed)) {
		t.Errorf("logs contain the plaintext")
	}

	var res struct {
		Healthz string `json:"healthz"`
		KeyID   string `json:"key_id"`
	}
	out := kmsctl(t, "status", "--endpoint", p.endpoint, "-o", "json")
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.KeyID != st.KeyId || res.Healthz != "ok" {
		t.Errorf("kmsctl status -o json = %q (%v), want key_id %q and healthz ok", out, err, st.KeyId)
	}
}

func TestPluginRotationAndReload(t *testing.T) {
	dir, keyring := newKeyring(t)
	p := startPlugin(t, "unix://"+filepath.Join(dir, "kms.sock"), "--keyring", keyring, "--keyring-reload-interval", "100ms")
	before := p.status(t)
	enc, err := p.client.Encrypt(ctx3s(t), &kmsapi.EncryptRequest{Plaintext: []byte("seed before rotation")})
	if err != nil {
		t.Fatal(err)
	}

	newID := strings.TrimSpace(kmsctl(t, "keyring", "rotate", "--keyring", keyring))
	if newID == before.KeyId || !strings.HasPrefix(newID, "local:") {
		t.Fatalf("kmsctl keyring rotate printed %q", newID)
	}
	waitFor(t, 10*time.Second, "Status to report "+newID, func() bool { return p.status(t).KeyId == newID })
	dec, err := p.client.Decrypt(ctx3s(t), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
	if err != nil || string(dec.Plaintext) != "seed before rotation" {
		t.Errorf("Decrypt(old) after rotation = %v, %v", dec, err)
	}
	enc2, err := p.client.Encrypt(ctx3s(t), &kmsapi.EncryptRequest{Plaintext: []byte("seed after rotation")})
	if err != nil || enc2.KeyId != newID {
		t.Fatalf("Encrypt after rotation = %v, %v; want key_id %q", enc2, err, newID)
	}

	// A corrupt keyring never replaces the good one.
	good, _ := os.ReadFile(keyring)
	if err := os.WriteFile(keyring, good[:len(good)/3], 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "/healthz to report the reload error", func() bool {
		code, body := p.get(t, "/healthz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "keyring")
	})
	if code, _ := p.get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d while serving the last good keyring, want 200", code)
	}
	if st := p.status(t); st.KeyId != newID || st.Healthz != "ok" {
		t.Errorf("Status() with a corrupt file = %+v, want ok and %q", st, newID)
	}
	for _, e := range []*kmsapi.EncryptResponse{enc, enc2} {
		if _, err := p.client.Decrypt(ctx3s(t), &kmsapi.DecryptRequest{Ciphertext: e.Ciphertext, KeyId: e.KeyId}); err != nil {
			t.Errorf("Decrypt with a corrupt file on disk = %v", err)
		}
	}
	_, metrics := p.get(t, "/metrics")
	if !strings.Contains(metrics, `kms_plugin_keyring_reloads_total{result="error"}`) || !strings.Contains(metrics, "kms_plugin_degraded 1") {
		t.Errorf("/metrics does not show the failed reload")
	}
	if err := os.WriteFile(keyring, good, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "/healthz to recover", func() bool {
		code, _ := p.get(t, "/healthz")
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
	p.status(t)

	// A second instance never steals a live socket.
	_, err = launch(t, "unix://"+sock, "--keyring", keyring)
	if err == nil || !strings.Contains(err.Error(), "another kms-plugin process") {
		t.Fatalf("second instance on a live socket: %v, want a refusal naming the other process", err)
	}
	p.status(t)

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
	_, err = launch(t, "unix://"+other, "--keyring", keyring)
	if err == nil || !strings.Contains(err.Error(), "already serving") {
		t.Fatalf("instance on another server's socket: %v, want a refusal", err)
	}

	// SIGTERM: graceful exit, socket removed.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("exit after SIGTERM = %v, want 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("plugin did not exit after SIGTERM")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket still present after SIGTERM: %v", err)
	}

	// After SIGKILL the socket stays; the next start replaces it.
	p2 := startPlugin(t, "unix://"+sock, "--keyring", keyring)
	_ = p2.cmd.Process.Kill()
	<-p2.exited
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("socket gone after SIGKILL (%v); the stale case is not exercised", err)
	}
	p3 := startPlugin(t, "unix://"+sock, "--keyring", keyring)
	p3.status(t)
}

func TestPluginAbstractSocketAndModes(t *testing.T) {
	_, keyring := newKeyring(t)
	name := "kms-plugin-test-" + filepath.Base(t.TempDir())
	p := startPlugin(t, "unix:///@"+name, "--keyring", keyring)
	if st := p.status(t); st.Healthz != "ok" {
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
	_, err := launch(t, "unix://"+filepath.Join(dir, "kms.sock"), "--keyring", keyring)
	if err == nil || !strings.Contains(err.Error(), "mode 0644") {
		t.Errorf("plugin on a 0644 keyring: %v, want a refusal naming the mode", err)
	}
}

func TestPluginDevMode(t *testing.T) {
	state := t.TempDir()
	p := startPlugin(t, "unix://"+filepath.Join(state, "dev.sock"), "--dev", "--state-dir", state)
	if st := p.status(t); st.Healthz != "ok" {
		t.Errorf("Status in dev mode = %+v", st)
	}
	if !strings.Contains(p.logs.String(), "DEVELOPMENT MODE") {
		t.Errorf("dev mode did not warn loudly")
	}
	fi, err := os.Stat(filepath.Join(state, "keyring.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("dev keyring: %v, mode %v; want a 0600 file", err, fi)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestKmsctlBenchAgainstPlugin(t *testing.T) {
	dir, keyring := newKeyring(t)
	p := startPlugin(t, "unix://"+filepath.Join(dir, "kms.sock"), "--keyring", keyring, "--log-level", "info")
	out := kmsctl(t, "bench", "--endpoint", p.endpoint, "--op", "roundtrip", "--baseline",
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
