package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// process is one server the local cluster runs: etcd, kube-apiserver,
// kube-controller-manager or kms-plugin. It runs in its own process group
// so that a kill reaches anything it forked, and with a parent-death signal
// so that it dies with the test binary even when the test times out and
// t.Cleanup never runs.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // set before done closes
}

// startProcess starts bin with args, appending its output to log.
func startProcess(name, log, bin string, args ...string) (*process, error) {
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	fmt.Fprintf(f, "=== %s %s: %s %s\n", time.Now().Format(time.RFC3339Nano), name, bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// signal sends sig to the whole process group and waits up to grace for the
// process to exit, then SIGKILLs the group. It is safe to call on a process
// that has already exited.
func (p *process) signal(sig syscall.Signal, grace time.Duration) {
	if ok, _ := p.exited(); ok {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	// Reap any member of the group that outlived its leader.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// kill SIGKILLs the process group and waits for the leader to be reaped.
func (p *process) kill() { p.signal(syscall.SIGKILL, 10*time.Second) }

// stop asks the process to exit with SIGTERM, then kills it.
func (p *process) stop() { p.signal(syscall.SIGTERM, 30*time.Second) }

// tail returns the last n lines of the process log.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// dumpLogsOnFailure logs the tail of every log in dir when t failed, and
// copies the logs to $KMS_E2E_ARTIFACTS/<test name>/ when that is set.
func dumpLogsOnFailure(t testing.TB, dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if art := os.Getenv("KMS_E2E_ARTIFACTS"); art != "" {
		dst := filepath.Join(art, strings.ReplaceAll(t.Name(), "/", "_"))
		if err := os.MkdirAll(dst, 0o755); err == nil {
			for _, l := range logs {
				if b, err := os.ReadFile(l); err == nil {
					_ = os.WriteFile(filepath.Join(dst, filepath.Base(l)), b, 0o644)
				}
			}
		}
	}
	if !t.Failed() {
		return
	}
	for _, l := range logs {
		t.Logf("--- last lines of %s ---\n%s", filepath.Base(l), tail(l, 40))
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Poll calls cond every interval until it returns true or an error made by
// Permanent, or timeout passes. A plain error from cond means "not yet"; the
// last one is included when Poll times out.
func Poll(ctx context.Context, interval, timeout time.Duration, what string, cond func(ctx context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		var stop permanent
		if errors.As(err, &stop) {
			return fmt.Errorf("%s: %w", what, stop.err)
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("%s: timed out after %s: last error: %w", what, timeout, err)
			}
			return fmt.Errorf("%s: timed out after %s", what, timeout)
		case <-t.C:
		}
	}
}

// Permanent wraps an error that ends Poll at once instead of retrying.
func Permanent(err error) error { return permanent{err} }

type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }
