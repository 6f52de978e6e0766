package local

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestUpdateThroughSymlink makes the operator's mistake of running kmsctl
// on a symbolic link to the keyring (as root, as a static pod's hostPath
// often is): the real file is updated in place with its owner and mode,
// the link stays a link, and no lock file is left behind.
func TestUpdateThroughSymlink(t *testing.T) {
	real := newKeyringFile(t)
	if os.Geteuid() == 0 {
		if err := os.Chown(real, 65532, 65532); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(real, 0o400); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "keyring.json")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	before := ownerOf(t, real)
	if _, err := Update(link, func(k *Keyring) error { _, err := k.Rotate(time.Now()); return err }); err != nil {
		t.Fatalf("Update(symlink) = %v", err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Fatalf("after Update the link is %v, %v; want it still a symbolic link", fi, err)
	}
	k, err := LoadAsOperator(real)
	if err != nil || len(k.Versions) != 2 {
		t.Fatalf("the real keyring after Update through the link: %v, %v; want 2 versions", k, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		t.Fatal(err)
	}
	if got := ownerOf(t, real); got != before || fi.Mode().Perm() != 0o400 {
		t.Errorf("real keyring after Update: owner %v mode %#o, want %v 0400", got, fi.Mode().Perm(), before)
	}
	for _, dir := range []string{filepath.Dir(real), filepath.Dir(link)} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() != "keyring.json" {
				t.Errorf("%s holds %s after Update; want only the keyring (no lock or temporary file)", dir, e.Name())
			}
		}
	}
	if err := os.Remove(real); err != nil {
		t.Fatal(err)
	}
	if _, err := Update(link, func(*Keyring) error { return nil }); err == nil {
		t.Errorf("Update of a dangling link succeeded")
	}
	if err := Create(link, k); err == nil {
		t.Errorf("Create through a dangling link succeeded; it must not create a file elsewhere")
	}
}

// TestUpdatesThroughLinkAndRealPathSerialize: one writer uses the link,
// another the real path. Every update lands: none is lost to an
// interleaved read-modify-write.
func TestUpdatesThroughLinkAndRealPathSerialize(t *testing.T) {
	real := newKeyringFile(t)
	link := filepath.Join(t.TempDir(), "link.json")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	const each = 15
	var wg sync.WaitGroup
	for _, p := range []string{real, link} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := Update(p, func(k *Keyring) error { _, err := k.Add(time.Now()); return err }); err != nil {
					t.Errorf("Update(%s) = %v", p, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	k, err := LoadAsOperator(real)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(k.Versions); got != 1+2*each {
		t.Errorf("after %d updates through the link and %d through the real path: %d versions, want %d", each, each, got, 1+2*each)
	}
}

func ownerOf(t *testing.T, path string) [2]uint32 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return [2]uint32{st.Uid, st.Gid}
}

// TestModeAdviceOnlyForKeyrings: a group-readable file that is not a
// keyring (--keyring /etc/passwd) is named as such; only a real keyring
// gets the chmod advice.
func TestModeAdviceOnlyForKeyrings(t *testing.T) {
	dir := t.TempDir()
	other := filepath.Join(dir, "passwd")
	if err := os.WriteFile(other, []byte("root:x:0:0:root:/root:/bin/bash\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ring := newKeyringFile(t)
	if err := os.Chmod(ring, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAsOperator(other); err == nil || !strings.Contains(err.Error(), "is not a kms-plugin keyring") || strings.Contains(err.Error(), "chmod") {
		t.Errorf("LoadAsOperator(a 0644 non-keyring) = %v, want 'not a kms-plugin keyring' and no chmod advice", err)
	}
	if _, err := LoadAsOperator(ring); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("LoadAsOperator(a 0644 keyring) = %v, want the chmod advice", err)
	}
}
