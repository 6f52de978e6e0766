// Package vaultserver starts real Vault servers for kms-plugin's
// integration tests: a dev server (in memory, unsealed, root token "root")
// for most tests, and a server with file storage, optionally serving TLS
// with a generated CA, for restart, seal and TLS tests. The Vault binary
// comes from test/testbin, built from the Go module proxy.
package vaultserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/test/testbin"
)

// Options choose the kind of server.
type Options struct {
	// FileStorage runs a real (non-dev) server with file storage, so that
	// Restart keeps keys and tokens. The harness initializes it with one
	// unseal key and unseals it.
	FileStorage bool
	// TLS serves HTTPS with certificates from a generated CA (implies
	// FileStorage). Server.TLS holds the files, including a client
	// certificate for cert auth.
	TLS bool
}

// Server is one running Vault.
type Server struct {
	// Addr is the URL clients use.
	Addr string
	// RootToken is a root token.
	RootToken string
	// UnsealKey unseals the server (the only key share).
	UnsealKey string
	// TLS holds the generated certificates when Options.TLS is set.
	TLS *TLSFiles
	// Dir is the server's scratch directory (config, storage, log).
	Dir string

	bin  string
	port int
	dev  bool
	// raftID, when set, makes this a node of a Cluster: integrated
	// storage (raft) instead of file storage.
	raftID string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start starts a Vault server and stops it when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.TLS {
		opts.FileStorage = true
	}
	s := &Server{
		bin:       testbin.Tool(t, "vault", "vault"),
		Dir:       t.TempDir(),
		dev:       !opts.FileStorage,
		RootToken: "root",
	}
	scheme := "http"
	if opts.TLS {
		tf, err := generateTLS(s.Dir)
		if err != nil {
			t.Fatalf("generate TLS files: %v", err)
		}
		s.TLS = tf
		scheme = "https"
	}
	s.firstLaunch(t, scheme)
	if s.dev {
		// The dev banner with the unseal key comes after the API is up.
		for deadline := time.Now().Add(10 * time.Second); s.UnsealKey == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			s.UnsealKey = s.devUnsealKey()
		}
		if s.UnsealKey == "" {
			t.Fatalf("vault dev server printed no unseal key")
		}
		return s
	}
	if err := s.initialize(); err != nil {
		t.Fatalf("initialize vault: %v", err)
	}
	return s
}

// firstLaunch picks free ports, writes the configuration and starts the
// process, which is killed when the test ends.
func (s *Server) firstLaunch(t testing.TB, scheme string) {
	t.Helper()
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			t.Logf("vault log tail (%s):\n%s", s.logPath(), tail(s.logPath(), 40))
		}
	})
	var err error
	for range 5 { // a port pair may be taken between probing and binding
		if s.port, err = freePortPair(); err != nil {
			t.Fatalf("find ports: %v", err)
		}
		s.Addr = fmt.Sprintf("%s://127.0.0.1:%d", scheme, s.port)
		if !s.dev {
			if err := s.writeConfig(); err != nil {
				t.Fatalf("write vault config: %v", err)
			}
		}
		if err = s.launch(); err == nil {
			return
		}
		s.kill()
	}
	t.Fatalf("start vault: %v", err)
}

func (s *Server) logPath() string { return filepath.Join(s.Dir, "vault.log") }

func (s *Server) writeConfig() error {
	tlsLines := `  tls_disable = true`
	if s.TLS != nil {
		tlsLines = fmt.Sprintf("  tls_cert_file = %q\n  tls_key_file = %q", s.TLS.ServerCert, s.TLS.ServerKey)
	}
	storage := fmt.Sprintf("storage \"file\" {\n  path = %q\n}", filepath.Join(s.Dir, "data"))
	if s.raftID != "" {
		// performance_multiplier 1: loopback timings, so an election takes
		// about a second rather than the production default's five.
		storage = fmt.Sprintf("storage \"raft\" {\n  path = %q\n  node_id = %q\n  performance_multiplier = 1\n}", filepath.Join(s.Dir, "data"), s.raftID)
	}
	cfg := fmt.Sprintf(`%s
listener "tcp" {
  address = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
%s
}
api_addr = %q
cluster_addr = "https://127.0.0.1:%d"
disable_mlock = true
ui = false
`, storage, s.port, s.port+1, tlsLines, s.Addr, s.port+1)
	if err := os.MkdirAll(filepath.Join(s.Dir, "data"), 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.Dir, "config.hcl"), []byte(cfg), 0o600)
}

// launch starts the process and waits until it answers HTTP.
func (s *Server) launch() error {
	var args []string
	if s.dev {
		args = []string{"server", "-dev", "-dev-root-token-id=" + s.RootToken,
			fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", s.port), "-dev-no-store-token"}
	} else {
		args = []string{"server", "-config=" + filepath.Join(s.Dir, "config.hcl")}
	}
	logf, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A clean environment: no VAULT_* from the developer's shell, and a
	// HOME of its own so nothing lands in the real one.
	cmd.Env = []string{"HOME=" + s.Dir, "PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()

	hc := s.httpClient()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("vault exited during start:\n%s", tail(s.logPath(), 20))
		default:
		}
		resp, err := hc.Get(s.Addr + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if !s.dev || resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("vault did not answer within 60s")
}

func (s *Server) httpClient() *http.Client {
	c, err := s.newClient("")
	if err != nil {
		return http.DefaultClient
	}
	return c.CloneConfig().HttpClient
}

var unsealKeyRe = regexp.MustCompile(`Unseal Key: (\S+)`)

func (s *Server) devUnsealKey() string {
	b, _ := os.ReadFile(s.logPath())
	if m := unsealKeyRe.FindSubmatch(b); m != nil {
		return string(m[1])
	}
	return ""
}

// initialize runs sys/init (one key share) on first start and unseals.
func (s *Server) initialize() error {
	c, err := s.newClient("")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := c.Sys().InitStatusWithContext(ctx)
	if err != nil {
		return fmt.Errorf("init status: %w", err)
	}
	if !st {
		resp, err := c.Sys().InitWithContext(ctx, &api.InitRequest{SecretShares: 1, SecretThreshold: 1})
		if err != nil {
			return fmt.Errorf("init: %w", err)
		}
		s.UnsealKey, s.RootToken = resp.Keys[0], resp.RootToken
	}
	return s.unseal(ctx)
}

// unseal unseals and waits until the server is active.
func (s *Server) unseal(ctx context.Context) error { return s.unsealTo(ctx, http.StatusOK) }

// unsealTo unseals and waits until sys/health answers want: 200 for the
// active node, 429 for an unsealed standby.
func (s *Server) unsealTo(ctx context.Context, want int) error {
	c, err := s.newClient("")
	if err != nil {
		return err
	}
	if _, err := c.Sys().UnsealWithContext(ctx, s.UnsealKey); err != nil {
		return fmt.Errorf("unseal: %w", err)
	}
	for ctx.Err() == nil {
		resp, err := s.httpClient().Get(s.Addr + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("vault does not answer sys/health with %d after unseal: %w", want, ctx.Err())
}

// newClient returns an API client for this server with token (which may
// be empty), trusting the generated CA, ignoring VAULT_* variables.
func (s *Server) newClient(token string) (*api.Client, error) {
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, cfg.Error
	}
	cfg.Address = s.Addr
	cfg.MaxRetries = 0
	cfg.Timeout = 30 * time.Second
	if s.TLS != nil {
		if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: s.TLS.CACert}); err != nil {
			return nil, err
		}
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.ClearNamespace()
	c.SetToken(token)
	return c, nil
}

// Client returns a root API client.
func (s *Server) Client(t testing.TB) *api.Client {
	t.Helper()
	c, err := s.newClient(s.RootToken)
	if err != nil {
		t.Fatalf("vault client: %v", err)
	}
	return c
}

// Stop shuts the server down gracefully and waits for it to exit.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
}

// kill ends the process at once (test cleanup).
func (s *Server) kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// Restart starts a stopped file-storage server again on the same address
// and unseals it. Dev servers forget everything, so they cannot restart.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.dev {
		t.Fatalf("vaultserver: a dev server cannot restart; use Options{FileStorage: true}")
	}
	s.Stop(t)
	if err := s.launch(); err != nil {
		t.Fatalf("restart vault: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.unseal(ctx); err != nil {
		t.Fatalf("restart vault: %v", err)
	}
}

// Seal seals the server.
func (s *Server) Seal(t testing.TB) {
	t.Helper()
	if err := s.Client(t).Sys().Seal(); err != nil {
		t.Fatalf("seal vault: %v", err)
	}
}

// Unseal unseals the server and waits until it is active.
func (s *Server) Unseal(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.unseal(ctx); err != nil {
		t.Fatalf("unseal vault: %v", err)
	}
}

// StartTransit starts a server as Start does, mounts the transit engine
// at mount and creates an aes256-gcm96 key named key in it: what most
// tests of the Vault provider begin with.
func StartTransit(t testing.TB, opts Options, mount, key string) *Server {
	t.Helper()
	s := Start(t, opts)
	s.EnableTransit(t, mount)
	s.CreateKey(t, mount, key)
	return s
}

// TokenFile writes the root token to a 0600 file in a new temporary
// directory and returns its path, for --vault-token-file.
func (s *Server) TokenFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(path, []byte(s.RootToken+"\n"), 0o600); err != nil {
		t.Fatalf("write the vault token file: %v", err)
	}
	return path
}

// EnableTransit mounts the transit engine at mount.
func (s *Server) EnableTransit(t testing.TB, mount string) {
	t.Helper()
	if err := s.Client(t).Sys().Mount(mount, &api.MountInput{Type: "transit"}); err != nil {
		t.Fatalf("enable transit at %s: %v", mount, err)
	}
}

// CreateKey creates an aes256-gcm96 transit key.
func (s *Server) CreateKey(t testing.TB, mount, name string) {
	t.Helper()
	if _, err := s.Client(t).Logical().Write(mount+"/keys/"+name, map[string]any{"type": "aes256-gcm96"}); err != nil {
		t.Fatalf("create transit key %s/%s: %v", mount, name, err)
	}
}

// WritePolicy stores an ACL policy.
func (s *Server) WritePolicy(t testing.TB, name, hcl string) {
	t.Helper()
	if err := s.Client(t).Sys().PutPolicy(name, hcl); err != nil {
		t.Fatalf("write policy %s: %v", name, err)
	}
}

// AppRole holds the credentials of the AppRole role that EnableAppRole made.
type AppRole struct {
	RoleIDFile, SecretIDFile   string // 0600 files for --vault-role-id-file, --vault-secret-id-file
	SecretID, SecretIDAccessor string
}

// EnableAppRole enables AppRole auth with the role "kms-plugin", whose
// tokens carry policy and live ttl (max one hour), and writes its role_id
// and a new secret_id to files in a temporary directory.
func (s *Server) EnableAppRole(t testing.TB, policy string, ttl time.Duration) AppRole {
	t.Helper()
	root := s.Client(t)
	if err := root.Sys().EnableAuthWithOptions("approle", &api.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatalf("enable approle: %v", err)
	}
	if _, err := root.Logical().Write("auth/approle/role/kms-plugin", map[string]any{
		"token_policies": []string{policy},
		"token_ttl":      int(ttl.Seconds()),
		"token_max_ttl":  3600,
	}); err != nil {
		t.Fatalf("write approle role: %v", err)
	}
	rid, err := root.Logical().Read("auth/approle/role/kms-plugin/role-id")
	if err != nil {
		t.Fatalf("read role_id: %v", err)
	}
	sid, err := root.Logical().Write("auth/approle/role/kms-plugin/secret-id", nil)
	if err != nil {
		t.Fatalf("create secret_id: %v", err)
	}
	dir := t.TempDir()
	a := AppRole{
		RoleIDFile:       filepath.Join(dir, "role-id"),
		SecretIDFile:     filepath.Join(dir, "secret-id"),
		SecretID:         sid.Data["secret_id"].(string),
		SecretIDAccessor: sid.Data["secret_id_accessor"].(string),
	}
	for path, content := range map[string]string{a.RoleIDFile: rid.Data["role_id"].(string), a.SecretIDFile: a.SecretID} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// freePortPair finds p such that p and p+1 are free on loopback (Vault
// also binds its cluster port, the API port plus one).
func freePortPair() (int, error) {
	for range 100 {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		l1.Close()
		if err != nil {
			continue
		}
		l2.Close()
		return p, nil
	}
	return 0, errors.New("no free port pair on 127.0.0.1")
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		// The dev server prints its root token and unseal key; they are
		// test-only, but keep them out of test output anyway.
		if strings.Contains(line, "Unseal Key:") || strings.Contains(line, "Root Token:") {
			continue
		}
		lines = append(lines, line)
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
