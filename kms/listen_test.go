package kms

import (
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestListenLeavesNonSocketsAlone makes the operator's mistake of pointing
// --listen at the keyring, a directory, a FIFO or a symlink: Listen refuses,
// says why, and the file is still there, unchanged.
func TestListenLeavesNonSocketsAlone(t *testing.T) {
	cases := []struct {
		name, want string
		make       func(t *testing.T, path string)
	}{
		{"keyring file", "regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(`{"kind":"kms-plugin-keyring"}`), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"empty file", "regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"empty directory", "directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"fifo", "named pipe", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink", "symbolic link", func(t *testing.T, path string) {
			target := path + ".target"
			if err := os.WriteFile(target, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kms.sock")
			c.make(t, path)
			before := snapshot(t, path)
			l, err := Listen(Endpoint{Address: path}, SocketOptions{})
			if err == nil {
				_ = l.Close()
				t.Fatalf("Listen(%s at the path) = nil error, want a refusal", c.name)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "not a socket") {
				t.Errorf("Listen(%s) error = %q, want it to name a %s that is not a socket", c.name, err, c.want)
			}
			if after := snapshot(t, path); after != before {
				t.Errorf("Listen(%s) changed the file: before %q, after %q", c.name, before, after)
			}
		})
	}
}

// snapshot describes the file at path: its type, mode and, for a regular
// file, its content.
func snapshot(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		return "missing: " + err.Error()
	}
	s := fi.Mode().String()
	if fi.Mode().IsRegular() {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s += " " + string(b)
	}
	return s
}

// TestListenReplacesStaleSocket: a socket left by a dead plugin is the one
// thing Listen removes.
func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kms.sock")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	_ = ul.Close() // the file stays, nobody answers: stale
	l, err := Listen(Endpoint{Address: path}, SocketOptions{})
	if err != nil {
		t.Fatalf("Listen over a stale socket = %v, want it replaced", err)
	}
	defer l.Close()
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("after Listen: %v, %v; want a 0600 socket", fi, err)
	}
}

// TestListenGroupBeforeMode: the socket gets its group before its mode is
// widened, so it is never open to the plugin's primary group in between.
func TestListenGroupBeforeMode(t *testing.T) {
	var order []string
	modeAtChown := fs.FileMode(0)
	chown, chmod := chownSocket, chmodSocket
	t.Cleanup(func() { chownSocket, chmodSocket = chown, chmod })
	chownSocket = func(name string, uid, gid int) error {
		fi, err := os.Lstat(name)
		if err != nil {
			return err
		}
		modeAtChown = fi.Mode().Perm()
		order = append(order, "chown")
		return chown(name, uid, gid)
	}
	chmodSocket = func(name string, mode fs.FileMode) error {
		order = append(order, "chmod")
		return chmod(name, mode)
	}
	path := filepath.Join(t.TempDir(), "kms.sock")
	l, err := Listen(Endpoint{Address: path}, SocketOptions{Mode: 0o660, Group: strconv.Itoa(os.Getgid())})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if strings.Join(order, ",") != "chown,chmod" || modeAtChown != 0o600 {
		t.Errorf("socket set up as %v with mode %#o at chown; want chown then chmod, 0600 until the group is set", order, modeAtChown)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("final socket: %v, %v; want mode 0660", fi, err)
	}
}
