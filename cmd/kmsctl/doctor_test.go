package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// encryptionConfig writes an EncryptionConfiguration with one KMS v2
// provider named name at endpoint.
func encryptionConfig(t *testing.T, name, endpoint string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "enc.yaml")
	doc := `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms: {apiVersion: v2, name: ` + name + `, endpoint: ` + endpoint + `}
      - identity: {}
`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDoctorPassesAHealthyNode(t *testing.T) {
	t.Setenv("ETCDCTL_ENDPOINTS", "")
	t.Setenv("KUBECONFIG", "")
	ep := serveLocal(t)
	keyring := filepath.Join(t.TempDir(), "keyring.json")
	if out, err := kmsctl("keyring", "init", "--keyring", keyring); err != nil {
		t.Fatalf("keyring init: %v\n%s", err, out)
	}
	out, err := kmsctl("doctor", "--encryption-config", encryptionConfig(t, "kms-plugin", ep), "--keyring", keyring, "--interval", "100ms")
	if err != nil {
		t.Fatalf("kmsctl doctor on a healthy node = %v\n%s", err, out)
	}
	for _, want := range []string{
		`(?m)^PASS +encryption config +.*1 KMS v2 provider`,
		`(?m)^PASS +provider kms-plugin socket +.*mode 0600`,
		`(?m)^PASS +provider kms-plugin status +healthy, key_id local:`,
		`(?m)^PASS +provider kms-plugin key_id +stable across two polls`,
		`(?m)^PASS +keyring ` + regexp.QuoteMeta(keyring),
		`(?m)^5 checks: 0 failed, 0 warnings\n\z`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("doctor output lacks %s:\n%s", want, out)
		}
	}
}

func TestDoctorFailsWithAHint(t *testing.T) {
	t.Setenv("ETCDCTL_ENDPOINTS", "")
	t.Setenv("KUBECONFIG", "")
	missing := "unix://" + filepath.Join(t.TempDir(), "kms.sock")
	bad := filepath.Join(t.TempDir(), "keyring.json")
	if out, err := kmsctl("keyring", "init", "--keyring", bad); err != nil {
		t.Fatalf("keyring init: %v\n%s", err, out)
	}
	if err := os.Chmod(bad, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := kmsctl("doctor", "--encryption-config", encryptionConfig(t, "kms-plugin", missing), "--keyring", bad, "-o", "json")
	if err == nil {
		t.Fatalf("kmsctl doctor with no plugin and an open keyring succeeded:\n%s", out)
	}
	var rep doctorReport
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		t.Fatalf("-o json: %v\n%s", jerr, out)
	}
	results := map[string]check{}
	for _, c := range rep.Checks {
		results[c.Check] = c
	}
	if c := results["provider kms-plugin socket"]; c.Result != checkFail || !strings.Contains(c.Detail, "does not exist") || !strings.Contains(c.Hint, "--listen") {
		t.Errorf("socket check = %+v, want FAIL naming the path with a --listen hint", c)
	}
	if c := results["keyring "+bad]; c.Result != checkFail || !strings.Contains(c.Detail, "chmod 600") {
		t.Errorf("keyring check = %+v, want FAIL with the chmod advice", c)
	}
	if rep.Failed != 2 || !strings.Contains(err.Error(), "2 of 3 checks failed") {
		t.Errorf("report %+v, error %v; want 2 of 3 failed", rep, err)
	}

	out, err = kmsctl("doctor", "--encryption-config", filepath.Join(t.TempDir(), "none.yaml"))
	if err == nil || !regexp.MustCompile(`(?m)^FAIL +encryption config`).MatchString(out) || !strings.Contains(out, "hint: point --encryption-config") {
		t.Errorf("doctor without a config = %v, want a FAIL line with a hint:\n%s", err, out)
	}
}
