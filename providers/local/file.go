package local

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// fileStamp identifies one version of the keyring file cheaply, so that the
// reload loop reads and parses the file only when it changed.
type fileStamp struct {
	ino, size    int64
	mtime, ctime int64
}

func stampOf(fi fs.FileInfo) fileStamp {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	}
	return fileStamp{
		ino: int64(st.Ino), size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}
}

// Load reads, checks and parses the keyring at path. The file must be a
// regular file owned by the current user and not accessible to group or
// others: it holds the keys to every Secret.
func Load(path string) (*Keyring, error) {
	k, _, err := load(path, false)
	return k, err
}

// LoadAsOperator loads the keyring at path for an operator's tool. It checks the mode
// as Load does, but lets root read and change a keyring owned by the
// plugin's user.
func LoadAsOperator(path string) (*Keyring, error) {
	k, _, err := load(path, os.Geteuid() == 0)
	return k, err
}

func load(path string, anyOwner bool) (*Keyring, fileStamp, error) {
	// Refuse a FIFO, device or directory before opening it: opening a
	// FIFO for reading blocks until a writer comes, which would hang the
	// reload loop (and shutdown) forever. O_NONBLOCK covers the file being
	// swapped for one between the stat and the open; it changes nothing
	// for a regular file.
	if fi, err := os.Stat(path); err != nil {
		return nil, fileStamp{}, fmt.Errorf("stat keyring: %w", err)
	} else if !fi.Mode().IsRegular() {
		return nil, fileStamp{}, notRegular(path, fi)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("open keyring: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("stat keyring: %w", err)
	}
	if err := checkFile(path, fi, anyOwner); err != nil {
		// Advise on the mode or owner only if the file is a keyring at
		// all: "chmod 600 /etc/passwd" is not advice to give.
		if !looksLikeKeyring(f) {
			return nil, fileStamp{}, fmt.Errorf("%s is not a kms-plugin keyring (no \"kind\": %q); check --keyring", path, fileKind)
		}
		return nil, fileStamp{}, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("read keyring %s: %w", path, err)
	}
	defer clear(b) // the file's text holds every key, base64-encoded
	if len(b) > maxFileSize {
		return nil, fileStamp{}, fmt.Errorf("keyring %s is larger than %d bytes", path, maxFileSize)
	}
	k, err := Parse(b)
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("keyring %s: %w", path, err)
	}
	return k, stampOf(fi), nil
}

// checkFile refuses a keyring that is not a regular file, is readable or
// writable by group or others, or (unless anyOwner) is owned by another user.
func checkFile(path string, fi fs.FileInfo, anyOwner bool) error {
	if !fi.Mode().IsRegular() {
		return notRegular(path, fi)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("keyring %s has mode %#o: it must not be accessible to group or others (chmod 600 %s)", path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && !anyOwner {
		if uid := os.Geteuid(); int(st.Uid) != uid {
			return fmt.Errorf("keyring %s is owned by uid %d, but kms-plugin runs as uid %d: chown it to the plugin's user", path, st.Uid, uid)
		}
	}
	return nil
}

// looksLikeKeyring reports whether f, read from its start, names the
// keyring kind in its first kilobytes. A file we may not read is given the
// benefit of the doubt.
func looksLikeKeyring(f *os.File) bool {
	head := make([]byte, 4096)
	n, err := f.ReadAt(head, 0)
	if n == 0 && err != nil && !errors.Is(err, io.EOF) {
		return true
	}
	defer clear(head)
	return bytes.Contains(head[:n], []byte(`"kind": "`+fileKind+`"`)) || bytes.Contains(head[:n], []byte(`"kind":"`+fileKind+`"`))
}

func notRegular(path string, fi fs.FileInfo) error {
	return fmt.Errorf("keyring %s is not a regular file (mode %s); point --keyring at the keyring file itself", path, fi.Mode().Type())
}

// Create writes a new keyring to path, refusing to overwrite anything. The
// directory must exist: a mistyped path fails, naming it, rather than
// growing a new directory the plugin will never look in.
func Create(path string, k *Keyring) error {
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
		return fmt.Errorf("keyring directory %s does not exist: create it first (owned by the plugin's user, mode 0700), or fix --keyring", filepath.Dir(path))
	}
	resolved, err := realPath(path)
	if err != nil {
		return err
	}
	return withLock(resolved, func() error {
		if _, err := os.Lstat(resolved); err == nil {
			return fmt.Errorf("keyring %s already exists; refusing to overwrite it", path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("stat keyring: %w", err)
		}
		return writeAtomic(resolved, k)
	})
}

// Update loads the keyring at path under an exclusive lock, applies change,
// and writes the result atomically. If change or the write fails, the file
// is left as it was. A path through symbolic links acts on the real file,
// which keeps its owner and mode; the links stay as they are.
func Update(path string, change func(*Keyring) error) (*Keyring, error) {
	resolved, err := realPath(path)
	if err != nil {
		return nil, err
	}
	var out *Keyring
	err = withLock(resolved, func() error {
		k, err := LoadAsOperator(resolved)
		if err != nil {
			return err
		}
		if err := change(k); err != nil {
			return err
		}
		if err := writeAtomic(resolved, k); err != nil {
			return err
		}
		out = k
		return nil
	})
	return out, err
}

// realPath resolves every symbolic link in path once, so that the lock,
// the temporary file and the rename all act beside the real file: renaming
// over a link would replace the link with a new file (root-owned, when
// root ran kmsctl) and leave the plugin's keyring untouched. For a file
// that does not exist yet, the directory is resolved; a link that points
// nowhere is refused.
func realPath(path string) (string, error) {
	resolved, err := filepath.EvalSymlinks(path)
	if err == nil {
		return resolved, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("resolve keyring path %s: %w", path, err)
	}
	if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode().Type() == fs.ModeSymlink {
		return "", fmt.Errorf("keyring %s is a symbolic link to a file that does not exist", path)
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return "", fmt.Errorf("resolve keyring directory of %s: %w", path, err)
	}
	return filepath.Join(dir, filepath.Base(path)), nil
}

// withLock runs fn holding an exclusive flock on the directory that holds
// the real keyring file, so that two kmsctl runs never interleave their
// read-modify-write cycles, whatever path (link or real) each was given.
// Locking the directory leaves no lock file behind: a lock file created by
// root would be unreadable to the plugin's user, and break the next
// non-root run.
func withLock(resolved string, fn func() error) error {
	dir := filepath.Dir(resolved)
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open keyring directory for locking: %w", err)
	}
	defer d.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			return fmt.Errorf("lock keyring directory %s: %w (is another kmsctl running?)", dir, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fn()
}

// writeAtomic writes k next to path in a temporary file (0600), syncs it,
// renames it over path and syncs the directory. A crash, a full disk or any
// error leaves either the old file or the new one, never a mix. The new
// file keeps the old one's owner, so that root running kmsctl does not
// leave a keyring the plugin's user may no longer load.
func writeAtomic(path string, k *Keyring) (err error) {
	b, err := k.Marshal()
	if err != nil {
		return err
	}
	defer clear(b) // it holds every key, base64-encoded
	owner, group := -1, -1
	mode := fs.FileMode(0o600)
	if fi, serr := os.Lstat(path); serr == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			owner, group = int(st.Uid), int(st.Gid)
		}
		// Keep a stricter mode (0400); never widen past 0600.
		if perm := fi.Mode().Perm(); perm&0o077 == 0 && perm&0o400 != 0 {
			mode = perm
		}
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary keyring: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(mode); err != nil {
		return fmt.Errorf("chmod temporary keyring: %w", err)
	}
	if owner >= 0 && (owner != os.Geteuid() || group != os.Getegid()) {
		if err = tmp.Chown(owner, group); err != nil {
			return fmt.Errorf("keep the keyring's owner %d:%d (run kmsctl as that user or as root): %w", owner, group, err)
		}
	}
	if _, err = tmp.Write(b); err != nil {
		return fmt.Errorf("write temporary keyring: %w", err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("sync temporary keyring: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("close temporary keyring: %w", err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace keyring: %w", err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
