package kms

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Endpoint is a parsed unix socket endpoint: "unix:///path/to.sock" or, for
// a Linux abstract socket, "unix:///@name".
type Endpoint struct {
	// Address is what net.Listen and net.Dial take: a file path, or "@name"
	// for an abstract socket.
	Address string
}

// maxSocketPath is the longest unix socket address Linux takes: sun_path
// is 108 bytes, with a terminating (or, for an abstract name, leading) NUL.
const maxSocketPath = 107

// ParseEndpoint parses the --listen or --endpoint value.
func ParseEndpoint(s string) (Endpoint, error) {
	ep, err := parseEndpoint(s)
	if err == nil && len(ep.Address) > maxSocketPath {
		return Endpoint{}, fmt.Errorf("endpoint %q: the socket path is %d bytes, but Linux allows at most %d: choose a shorter path", s, len(ep.Address), maxSocketPath)
	}
	return ep, err
}

func parseEndpoint(s string) (Endpoint, error) {
	rest, ok := strings.CutPrefix(s, "unix://")
	if !ok {
		return Endpoint{}, fmt.Errorf("endpoint %q: want unix:///path or unix:///@name", s)
	}
	switch {
	case strings.HasPrefix(rest, "/@"):
		if len(rest) == 2 {
			return Endpoint{}, fmt.Errorf("endpoint %q: abstract socket name is empty", s)
		}
		return Endpoint{Address: rest[1:]}, nil
	case strings.HasPrefix(rest, "/") && len(rest) > 1 && !strings.HasSuffix(rest, "/"):
		return Endpoint{Address: filepath.Clean(rest)}, nil
	default:
		return Endpoint{}, fmt.Errorf("endpoint %q: want an absolute path, unix:///path or unix:///@name", s)
	}
}

// WideModeWarning says why a socket mode is risky, or returns "": any mode
// that lets other users connect opens a decryption oracle to them.
func WideModeWarning(mode fs.FileMode) string {
	switch {
	case mode&0o006 != 0:
		return fmt.Sprintf("socket mode %#o lets every local user call Decrypt; use 0600, or 0660 with --socket-group", mode)
	case mode&0o060 != 0 && mode&0o060 != 0o060:
		return fmt.Sprintf("socket mode %#o gives the group only part of read and write; connecting needs both (0660)", mode)
	}
	return ""
}

// Abstract reports whether the endpoint is a Linux abstract socket, which
// has no file and so no mode, owner or stale file to clean up.
func (e Endpoint) Abstract() bool { return strings.HasPrefix(e.Address, "@") }

// String returns the endpoint in unix:// form.
func (e Endpoint) String() string {
	if e.Abstract() {
		return "unix:///" + e.Address
	}
	return "unix://" + e.Address
}

// SocketOptions sets who may connect to a file socket.
type SocketOptions struct {
	// Mode of the socket file; 0600 when zero. Widen it deliberately.
	Mode fs.FileMode
	// Group, if set, owns the socket (a name or numeric gid).
	Group string
	// CreateDir creates a missing parent directory (0750). Set it only for
	// a documented default path: a mistyped --listen must fail, naming
	// the directory, rather than grow a new one.
	CreateDir bool
}

// Validate checks the options without touching the file system: a
// socket group that does not exist is refused before anything starts.
func (o SocketOptions) Validate() error {
	if o.Mode&^0o777 != 0 {
		return fmt.Errorf("socket mode %#o: only permission bits are allowed", o.Mode)
	}
	if o.Group != "" {
		if _, err := lookupGroup(o.Group); err != nil {
			return err
		}
	}
	return nil
}

// socketListener owns a unix socket and, for a file socket, the lock file
// beside it that keeps a second instance from taking it over.
type socketListener struct {
	net.Listener
	path string   // socket file; "" for an abstract socket
	lock *os.File // held for the listener's life
	ino  uint64   // inode of the socket we created
}

// Listen creates the socket for ep. For a file socket it creates the parent
// directory (0750) if opts.CreateDir, else requires it, takes an exclusive lock on "<socket>.lock", refuses to
// start if another live server answers on the path, removes a stale socket
// left by a dead process, and creates the new socket with opts' mode and
// group (never wider than asked, not even for an instant).
func Listen(ep Endpoint, opts SocketOptions) (net.Listener, error) {
	if ep.Abstract() {
		l, err := net.Listen("unix", ep.Address)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", ep, err)
		}
		return l, nil
	}
	mode := opts.Mode
	if mode == 0 {
		mode = 0o600
	}
	if mode&^0o777 != 0 {
		return nil, fmt.Errorf("socket mode %#o: only permission bits are allowed", mode)
	}
	gid := -1
	if opts.Group != "" {
		g, err := lookupGroup(opts.Group)
		if err != nil {
			return nil, err
		}
		gid = g
	}
	path := ep.Address
	if opts.CreateDir {
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return nil, fmt.Errorf("create socket directory: %w", err)
		}
	} else if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("listen on %s: the directory %s does not exist (or is not a directory): create it, owned by the plugin's user, or fix the path", path, filepath.Dir(path))
	}
	lock, err := lockFile(path + ".lock")
	if err != nil {
		return nil, err
	}
	l, ino, err := listenFile(path, mode, gid)
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	return &socketListener{Listener: l, path: path, lock: lock, ino: ino}, nil
}

// chownSocket and chmodSocket are os.Chown and os.Chmod; tests watch the
// order in which listenFile calls them.
var (
	chownSocket = os.Chown
	chmodSocket = os.Chmod
)

func listenFile(path string, mode fs.FileMode, gid int) (net.Listener, uint64, error) {
	if fi, err := os.Lstat(path); err == nil {
		// Only a stale socket may go. Anything else at the path (the
		// keyring, when --listen and --keyring are mixed up, a directory, a
		// symlink) is the operator's and stays untouched.
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, 0, fmt.Errorf("listen on %s: a %s is there, not a socket; kms-plugin removes only a stale socket, so check --listen (it must not name the keyring or any other file)", path, fileKind(fi.Mode()))
		}
		if live(path) {
			return nil, 0, fmt.Errorf("listen on %s: another server is already serving on this socket; stop it first", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, 0, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The umask makes the socket 0600 from the moment it exists; chmod then
	// widens it only if the operator asked.
	old := syscall.Umask(0o177)
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, 0, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Close must not unlink: socketListener.Close removes the file only if
	// it is still ours.
	ul.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, uint64, error) {
		_ = ul.Close()
		_ = os.Remove(path)
		return nil, 0, err
	}
	// Group first, then mode: the other order would open a group-readable
	// mode to the plugin's primary group until the chown.
	if gid >= 0 {
		if err := chownSocket(path, -1, gid); err != nil {
			return fail(fmt.Errorf("chown socket to group %d: %w", gid, err))
		}
	}
	if err := chmodSocket(path, mode); err != nil {
		return fail(fmt.Errorf("chmod socket: %w", err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("stat socket: %w", err))
	}
	return ul, inode(fi), nil
}

// Close stops listening, removes the socket file if it is still the one we
// created, and releases the lock.
func (l *socketListener) Close() error {
	err := l.Listener.Close()
	if fi, serr := os.Lstat(l.path); serr == nil && inode(fi) == l.ino {
		_ = os.Remove(l.path)
	}
	_ = l.lock.Close()
	return err
}

// live reports whether a server accepts connections on the socket at path.
func live(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// lockFile takes a non-blocking exclusive flock on path, creating it 0600.
// The kernel releases it when the process dies, so a crash never leaves a
// lock behind.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open socket lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("socket %s is held by another kms-plugin process (lock %s); stop it first", strings.TrimSuffix(path, ".lock"), path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// fileKind names a file type for an error message.
func fileKind(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "regular file"
	case fs.ModeDir:
		return "directory"
	case fs.ModeSymlink:
		return "symbolic link"
	case fs.ModeNamedPipe:
		return "named pipe (FIFO)"
	case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
		return "device"
	default:
		return "non-socket file"
	}
}

func inode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

func lookupGroup(name string) (int, error) {
	if gid, err := strconv.Atoi(name); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("socket group %q: %w", name, err)
	}
	return strconv.Atoi(g.Gid)
}

// dialContext connects to ep; gRPC clients use it as their dialer so that
// abstract sockets work too.
func dialContext(ctx context.Context, ep Endpoint) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", ep.Address)
}
