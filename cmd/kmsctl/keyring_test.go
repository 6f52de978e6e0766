package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kms-plugin/kms-plugin/providers"
)

// kmsctl runs the CLI in process and returns stdout and the error.
func kmsctl(args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestKeyringCommands(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "keyring.json")
	// A missing directory is named, not created.
	if _, err := kmsctl("keyring", "init", "--keyring", path); err == nil || !strings.Contains(err.Error(), filepath.Dir(path)+" does not exist") {
		t.Fatalf("keyring init in a missing directory = %v, want a refusal naming it", err)
	}
	if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := kmsctl("keyring", "init", "--keyring", path)
	if err != nil || !strings.Contains(out, ":v1") {
		t.Fatalf("keyring init = %q, %v", out, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file: %v, %v; want mode 0600", fi, err)
	}
	before, _ := os.ReadFile(path)
	if _, err := kmsctl("keyring", "init", "--keyring", path); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("second init = %v, want a refusal", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("refused init changed the keyring")
	}

	out, err = kmsctl("keyring", "rotate", "--keyring", path)
	if err != nil || !regexp.MustCompile(`^local:[0-9a-f]{16}:v2:[0-9a-f]{16}$`).MatchString(strings.TrimSpace(out)) {
		t.Fatalf("keyring rotate = %q, %v; want the v2 key_id", out, err)
	}
	if out, err = kmsctl("keyring", "add", "--keyring", path); err != nil || !strings.Contains(out, "version 3, active") {
		t.Fatalf("keyring add = %q, %v", out, err)
	}
	if _, err = kmsctl("keyring", "promote", "--keyring", path, "--version", "3"); err != nil {
		t.Fatalf("keyring promote = %v", err)
	}
	if _, err = kmsctl("keyring", "retire", "--keyring", path, "--version", "3"); err == nil {
		t.Errorf("retiring the primary succeeded")
	}
	if _, err = kmsctl("keyring", "retire", "--keyring", path, "--version", "1"); err != nil {
		t.Fatalf("keyring retire 1 = %v", err)
	}
	if _, err = kmsctl("keyring", "promote", "--keyring", path, "--version", "1"); err == nil {
		t.Errorf("promoting a retired version succeeded")
	}
	if out, err = kmsctl("keyring", "reactivate", "--keyring", path, "--version", "1"); err != nil || !strings.Contains(out, "now active") {
		t.Fatalf("keyring reactivate 1 = %q, %v", out, err)
	}
	if _, err = kmsctl("keyring", "retire", "--keyring", path, "--version", "1"); err != nil {
		t.Fatalf("keyring retire 1 again = %v", err)
	}
	if _, err = kmsctl("keyring", "prune", "--keyring", path, "--version", "2"); err == nil || !strings.Contains(err.Error(), "retire it first") {
		t.Errorf("pruning an active version = %v, want a refusal", err)
	}

	out, err = kmsctl("keyring", "list", "--keyring", path, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var infos []providers.KeyInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatalf("list -o json is not JSON: %v\n%s", err, out)
	}
	want := []providers.KeyState{providers.StateRetired, providers.StateActive, providers.StatePrimary}
	if len(infos) != 3 {
		t.Fatalf("list = %d versions, want 3", len(infos))
	}
	for i, info := range infos {
		if info.Version != int64(i+1) || info.State != want[i] || !strings.HasSuffix(info.KeyID, ":v"+string(rune('1'+i))+":"+info.Check) {
			t.Errorf("version %d = %+v, want state %s", i+1, info, want[i])
		}
	}
	raw, _ := os.ReadFile(path)
	if out, err = kmsctl("keyring", "prune", "--keyring", path, "--version", "1"); err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("keyring prune 1 = %q, %v", out, err)
	}
	out, _ = kmsctl("keyring", "list", "--keyring", path, "-o", "json")
	infos = nil
	if err := json.Unmarshal([]byte(out), &infos); err != nil || len(infos) != 3 || infos[0].State != providers.StatePruned {
		t.Errorf("after prune, version 1 is not listed as a pruned tombstone:\n%s", out)
	}
	var file struct {
		Versions []struct {
			Key string `json:"key"`
		} `json:"versions"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	table, err := kmsctl("keyring", "list", "--keyring", path)
	if err != nil || !strings.Contains(table, "VERSION") {
		t.Fatalf("list = %q, %v", table, err)
	}
	for _, v := range file.Versions {
		if strings.Contains(out, v.Key) || strings.Contains(table, v.Key) {
			t.Errorf("keyring list printed key bytes")
		}
	}
	y, err := kmsctl("keyring", "list", "--keyring", path, "-o", "yaml")
	if err != nil || !strings.Contains(y, "key_id: local:") || !strings.Contains(y, "state: pruned") {
		t.Errorf("keyring list -o yaml = %v\n%s\nwant the JSON fields as YAML", err, y)
	}
	if _, err := kmsctl("keyring", "list", "--keyring", path, "-o", "xml"); err == nil {
		t.Errorf("-o xml accepted")
	}
}

func TestStatusCommandFailsWithoutPlugin(t *testing.T) {
	_, err := kmsctl("status", "--endpoint", "unix://"+filepath.Join(t.TempDir(), "none.sock"), "--timeout", "200ms")
	if err == nil {
		t.Errorf("status against no plugin succeeded")
	}
	if _, err := kmsctl("status", "--endpoint", "tcp://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "unix://") {
		t.Errorf("status with a tcp endpoint = %v, want an endpoint error", err)
	}
}
