// Package faults breaks the local keyring under a running kms-plugin that
// is serving load, and checks that nothing the apiserver sees changes: the
// last good keyring keeps serving with zero failed calls while /healthz
// says why the file was refused, and a keyring write that runs out of disk
// leaves the file intact. Bounded (about 20 s) and loopback only, so it
// runs with the unit tests.
package faults

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/providers/local"
	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// replace puts b at path the way an operator's tool would (temporary file
// and rename), so the plugin never reads a half-written file.
func replace(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil { // WriteFile's mode is masked by umask
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func keyID(t *testing.T, c kmsapi.KeyManagementServiceClient) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := c.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatalf("Status() = %v", err)
	}
	if st.GetHealthz() != "ok" {
		t.Fatalf("Status().Healthz = %q, want ok", st.GetHealthz())
	}
	return st.GetKeyId()
}

// TestKeyringFaultsUnderLoad replaces the keyring with every kind of bad
// file while 16 clients encrypt, decrypt and poll Status.
func TestKeyringFaultsUnderLoad(t *testing.T) {
	path := plugintest.NewKeyring(t)
	plugintest.MustKmsctl(t, "keyring", "rotate", "--keyring", path) // two versions, so old ciphertexts exist
	p := plugintest.Start(t, "--keyring", path, "--keyring-reload-interval", "100ms")
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	id := keyID(t, p.Client)

	otherRing := plugintest.NewKeyring(t)
	other, err := os.ReadFile(otherRing)
	if err != nil {
		t.Fatal(err)
	}

	load := plugintest.StartLoad(p.Client, 16)
	defer load.Stop()

	faults := []struct {
		name   string
		apply  func()
		reason string // what /healthz must say
	}{
		{"garbage", func() { replace(t, path, []byte("\x00\xffthis is not a keyring\n"), 0o600) }, "not valid keyring JSON"},
		{"truncated", func() { replace(t, path, good[:len(good)/2], 0o600) }, "not valid keyring JSON"},
		{"empty", func() { replace(t, path, nil, 0o600) }, "keyring file is empty"},
		{"one flipped bit", func() {
			b := []byte(strings.Replace(string(good), `"state": "active"`, `"state": "retired"`, 1))
			replace(t, path, b, 0o600)
		}, "checksum mismatch"},
		{"group-readable", func() { replace(t, path, good, 0o640) }, "must not be accessible to group or others"},
		{"world-writable", func() { replace(t, path, good, 0o602) }, "must not be accessible to group or others"},
		{"removed", func() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, "no such file"},
		{"a different keyring", func() { replace(t, path, other, 0o600) }, "different keyring"},
		{"a directory", func() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	}
	if os.Geteuid() == 0 {
		faults = append(faults, struct {
			name   string
			apply  func()
			reason string
		}{"owned by another user", func() {
			replace(t, path, good, 0o600)
			if err := os.Chown(path, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 65534"})
	}

	for _, f := range faults {
		before := load.Snapshot()
		f.apply()
		plugintest.WaitFor(t, 10*time.Second, "/healthz to report the "+f.name+" keyring", func() bool {
			code, body := p.Get(t, "/healthz")
			return code == http.StatusServiceUnavailable && strings.Contains(body, f.reason)
		})
		_, body := p.Get(t, "/healthz")
		t.Logf("%-22s /healthz: %s", f.name, body)
		if code, body := p.Get(t, "/readyz"); code != http.StatusOK {
			t.Errorf("%s: /readyz = %d %q, want 200: the last good keyring still serves", f.name, code, body)
		}
		if m := p.Metrics(t); m["kms_plugin_degraded"] != 1 {
			t.Errorf("%s: kms_plugin_degraded = %v, want 1", f.name, m["kms_plugin_degraded"])
		}
		time.Sleep(300 * time.Millisecond) // let load run against the refused file
		if got := keyID(t, p.Client); got != id {
			t.Errorf("%s: Status key_id = %q, want the last good %q", f.name, got, id)
		}
		// Restore the good file.
		if fi, err := os.Lstat(path); err == nil && fi.IsDir() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}
		replace(t, path, good, 0o600)
		plugintest.WaitFor(t, 10*time.Second, "/healthz to recover after "+f.name, func() bool {
			code, _ := p.Get(t, "/healthz")
			return code == http.StatusOK
		})
		after := load.Snapshot()
		if after.Errors != before.Errors {
			t.Errorf("%s: %d calls failed while the keyring was bad: %v", f.name, after.Errors-before.Errors, after.FirstErrors)
		}
		if after.Ops-before.Ops < 50 {
			t.Errorf("%s: only %d calls made while the keyring was bad; the load is not running", f.name, after.Ops-before.Ops)
		}
	}

	// A real rotation still goes through after all that.
	out := plugintest.MustKmsctl(t, "keyring", "rotate", "--keyring", path)
	newID := strings.TrimSpace(out)
	plugintest.WaitFor(t, 10*time.Second, "the rotated key_id", func() bool { return keyID(t, p.Client) == newID })

	res := load.Stop()
	t.Logf("load: %d calls, %d failed", res.Ops, res.Errors)
	if res.Errors != 0 {
		t.Errorf("%d of %d calls failed during keyring faults: %v", res.Errors, res.Ops, res.FirstErrors)
	}
}

// mountTmpfs makes dir a 64 KiB tmpfs, or skips the test when this process
// may not mount (not root, or no CAP_SYS_ADMIN in a container).
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=64k,mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs (%v); the file-size-limit case covers the same failing write", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// fill writes a filler file until the filesystem is full.
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1024)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill the disk: %v, want ENOSPC", err)
			}
			break
		}
	}
	// Small writes may still fit in the last page: make it exactly full.
	for {
		if _, err := f.Write([]byte{0}); err != nil {
			break
		}
	}
}

// TestKeyringRotateOnFullDisk runs `kmsctl keyring rotate` with no space
// left for the new file, under a plugin serving that keyring: kmsctl fails
// and says why, the file is byte for byte what it was and still loads, no
// temporary file is left behind, and the plugin never notices. The disk is
// a full 64 KiB tmpfs (ENOSPC); where mounting is not allowed, a file size
// limit on kmsctl (ulimit -f 0, EFBIG) fails the same write without one.
func TestKeyringRotateOnFullDisk(t *testing.T) {
	t.Run("tmpfs", func(t *testing.T) { testRotateOnFullDisk(t, true) })
	t.Run("file-size-limit", func(t *testing.T) { testRotateOnFullDisk(t, false) })
}

func testRotateOnFullDisk(t *testing.T, tmpfs bool) {
	dir, err := os.MkdirTemp("", "kp-disk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if tmpfs {
		mountTmpfs(t, dir)
	}
	path := filepath.Join(dir, "keyring.json")
	plugintest.MustKmsctl(t, "keyring", "init", "--keyring", path)
	p := plugintest.Start(t, "--keyring", path, "--keyring-reload-interval", "100ms")
	id := keyID(t, p.Client)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	load := plugintest.StartLoad(p.Client, 8)
	defer load.Stop()

	var out []byte
	kmsctl := testbin.Build(t, "./cmd/kmsctl")
	if tmpfs {
		fill(t, dir)
		out, err = exec.Command(kmsctl, "keyring", "rotate", "--keyring", path).CombinedOutput()
	} else {
		// No mount permission: the same failing write, from a file size
		// limit (EFBIG) instead of a full filesystem (ENOSPC).
		out, err = exec.Command("sh", "-c", `ulimit -f 0 && exec "$0" "$@"`, kmsctl, "keyring", "rotate", "--keyring", path).CombinedOutput()
	}
	if err == nil {
		t.Fatalf("kmsctl keyring rotate on a full disk succeeded:\n%s", out)
	}
	if want := "write temporary keyring"; !strings.Contains(string(out), want) || !strings.Contains(string(out), map[bool]string{true: "no space left", false: "file too large"}[tmpfs]) {
		t.Errorf("kmsctl keyring rotate on a full disk said %q, want it to mention %q", out, want)
	}
	t.Logf("kmsctl on a full disk: %s", strings.TrimSpace(string(out)))

	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(after) != string(before) {
		t.Fatalf("the keyring changed after a failed write on a full disk")
	}
	if _, err := local.Load(path); err != nil {
		t.Errorf("the keyring no longer loads after a failed write: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	time.Sleep(500 * time.Millisecond) // a few reload intervals
	if code, body := p.Get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %q after a failed write; the file did not change, so want 200", code, body)
	}
	if got := keyID(t, p.Client); got != id {
		t.Errorf("Status key_id = %q after a failed rotation, want %q", got, id)
	}

	// Space again: the rotation goes through and the plugin follows.
	if tmpfs {
		if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
			t.Fatal(err)
		}
	}
	newID := strings.TrimSpace(plugintest.MustKmsctl(t, "keyring", "rotate", "--keyring", path))
	plugintest.WaitFor(t, 10*time.Second, "the plugin to serve the rotated key", func() bool { return keyID(t, p.Client) == newID })

	if res := load.Stop(); res.Errors != 0 {
		t.Errorf("%d of %d calls failed around the full disk: %v", res.Errors, res.Ops, res.FirstErrors)
	}
}
