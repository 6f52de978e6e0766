// Package plugintest runs the real kms-plugin binary for tests outside
// cmd/kms-plugin: the conformance kit's tests, the soak and fault tests and
// the log-leak test. It starts the binary built from the working tree with
// JSON logs at debug level and an ephemeral health port, waits for the
// "serving KMS v2" log line, captures every log line, and reads /metrics
// and /proc for resource checks.
package plugintest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// Plugin is a running kms-plugin process.
type Plugin struct {
	// Endpoint is the gRPC endpoint, unix:///path.
	Endpoint string
	// HealthAddr is host:port of /healthz and /metrics.
	HealthAddr string
	// Client talks KMS v2 to the plugin.
	Client kmsapi.KeyManagementServiceClient
	// Logs holds everything the plugin wrote to stderr.
	Logs *Buffer

	cmd    *exec.Cmd
	conn   *grpc.ClientConn
	exited chan struct{}
	err    error
}

// Buffer is a goroutine-safe log sink.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// SocketDir returns a fresh directory with a short path (unix socket paths
// are limited to 108 bytes), removed when the test ends.
func SocketDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "kp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// Start runs kms-plugin with args after the defaults (a socket in a fresh
// directory, --health-addr 127.0.0.1:0, JSON logs at debug level,
// --health-interval 200ms) and waits until it serves. The process is
// killed when the test ends; its logs are printed if the test failed.
func Start(t testing.TB, args ...string) *Plugin {
	t.Helper()
	p, err := Launch(t, "unix://"+filepath.Join(SocketDir(t), "kms.sock"), args...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Launch is Start on a given endpoint that returns an error, with the
// plugin's logs, when the plugin exits or does not serve within 30 s: the
// way to test that it refuses to start.
func Launch(t testing.TB, endpoint string, args ...string) (*Plugin, error) {
	t.Helper()
	bin := testbin.Build(t, "./cmd/kms-plugin")
	args = append([]string{"--listen", endpoint, "--health-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "debug", "--health-interval", "200ms"}, args...)
	cmd := exec.Command(bin, args...)
	pr, pw := io.Pipe()
	p := &Plugin{Endpoint: endpoint, Logs: &Buffer{}, cmd: cmd, exited: make(chan struct{})}
	// Logs first: the reader of pw declares the plugin ready when it sees
	// "serving KMS v2", and a test may then read Logs at once; a chunk
	// written to pw first would not be in Logs yet.
	cmd.Stderr = io.MultiWriter(p.Logs, pw)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kms-plugin: %w", err)
	}
	go func() { p.err = cmd.Wait(); _ = pw.Close(); close(p.exited) }()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("kms-plugin logs:\n%s", tail(p.Logs.String(), 60))
		}
	})
	ready := make(chan string, 1)
	go func() {
		// Drain the pipe whatever happens: a reader that stops early (a
		// line longer than the scanner's buffer ends Scan) would block the
		// plugin's next log write, and so the plugin.
		defer func() { _, _ = io.Copy(io.Discard, pr) }()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		health := ""
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
				health = line.Addr
			case "serving KMS v2":
				ready <- health
				return
			}
		}
	}()
	select {
	case p.HealthAddr = <-ready:
	case <-p.exited:
		return nil, fmt.Errorf("kms-plugin exited before serving: %v\n%s", p.err, p.Logs.String())
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("kms-plugin did not serve within 30s\n%s", p.Logs.String())
	}
	client, conn, err := kms.Dial(endpoint)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = conn.Close() })
	p.Client, p.conn = client, conn
	return p, nil
}

// Exited is closed when the process has exited; Err then returns how.
func (p *Plugin) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit error once Exited is closed (nil for exit 0).
func (p *Plugin) Err() error {
	<-p.exited
	return p.err
}

// PID is the plugin's process id.
func (p *Plugin) PID() int { return p.cmd.Process.Pid }

// Kill stops the plugin at once and waits for it.
func (p *Plugin) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Stop sends SIGTERM and waits up to 15 s for a clean exit.
func (p *Plugin) Stop(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("kms-plugin exited with %v after SIGTERM", p.err)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("kms-plugin did not exit within 15s of SIGTERM")
		p.Kill()
	}
}

// Get fetches path from the health server.
func (p *Plugin) Get(t testing.TB, path string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + p.HealthAddr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// Metrics scrapes /metrics and returns every sample by its full name with
// labels as printed ("go_goroutines", `kms_plugin_requests_total{code="OK",method="Encrypt"}`).
func (p *Plugin) Metrics(t testing.TB) map[string]float64 {
	t.Helper()
	code, body := p.Get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	return ParseMetrics(body)
}

// ParseMetrics reads Prometheus text exposition format, skipping comments.
func ParseMetrics(body string) map[string]float64 {
	out := map[string]float64{}
	for line := range strings.SplitSeq(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

// RSS reads the plugin's resident set size from /proc, in bytes.
func (p *Plugin) RSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc/<pid>/status")
}

// Kmsctl runs the kmsctl binary built from the working tree and returns
// what it printed, standard output then standard error.
func Kmsctl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	r := testbin.Command(context.Background(), []string{testbin.Build(t, "./cmd/kmsctl")}, args...)
	return r.Stdout + r.Stderr, r.Err
}

// MustKmsctl is Kmsctl that fails the test on error.
func MustKmsctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := Kmsctl(t, args...)
	if err != nil {
		t.Fatalf("kmsctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// NewKeyring creates a keyring with kmsctl in a fresh directory and
// returns its path.
func NewKeyring(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyring.json")
	MustKmsctl(t, "keyring", "init", "--keyring", path)
	return path
}

// WaitFor polls ok every 50 ms until it holds or d passes.
func WaitFor(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Ctx returns a context that ends after d or with the test.
func Ctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// StatusKeyID calls Status and returns its key_id, failing the test unless
// the plugin answers healthy.
func StatusKeyID(t testing.TB, c kmsapi.KeyManagementServiceClient) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := c.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatalf("Status() = %v", err)
	}
	if st.GetVersion() != "v2" || st.GetHealthz() != "ok" {
		t.Fatalf("Status() = version %q, healthz %q; want v2, ok", st.GetVersion(), st.GetHealthz())
	}
	return st.GetKeyId()
}
