// Package leak runs kms-plugin with every log line captured at debug level
// through round trips, bad inputs, the conformance kit, rotations and
// keyring reload errors (and, under -tags integration, Vault logins,
// token rewrites and revocations), and asserts that no secret appears in
// any log line, gRPC error string, health body, /metrics output or kmsctl
// output: no plaintext DEK seed, no keyring key byte, no Vault token or
// secret_id, in raw, hex or base64 form.
package leak

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/conformance"
	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// secrets holds every secret a run handled, in every form it could be
// written in, and the text it must not appear in.
type secrets struct {
	mu    sync.Mutex
	forms map[string]string // form -> what it is
	texts []text
}

type text struct{ where, body string }

// add records a secret under a label. Forms shorter than 12 bytes are not
// searched: they would match by chance.
func (s *secrets) add(label string, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.forms == nil {
		s.forms = map[string]string{}
	}
	for name, form := range map[string]string{
		"raw":       string(b),
		"hex":       hex.EncodeToString(b),
		"HEX":       strings.ToUpper(hex.EncodeToString(b)),
		"base64":    base64.StdEncoding.EncodeToString(b),
		"base64raw": base64.RawStdEncoding.EncodeToString(b),
		"base64url": base64.RawURLEncoding.EncodeToString(b),
		"quoted":    strings.Trim(fmt.Sprintf("%q", b), `"`),
		"bytes":     fmt.Sprintf("%d", b), // what %v of a []byte prints
	} {
		if len(form) >= 12 {
			s.forms[form] = label + " (" + name + ")"
		}
	}
}

// addString records a textual secret such as a token.
func (s *secrets) addString(label, v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.forms == nil {
		s.forms = map[string]string{}
	}
	s.forms[v] = label
	s.forms[base64.StdEncoding.EncodeToString([]byte(v))] = label + " (base64)"
}

// seen records text that must be free of secrets.
func (s *secrets) seen(where, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.texts = append(s.texts, text{where, body})
}

// leaks describes every secret found in any recorded text.
func (s *secrets) leaks() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, tx := range s.texts {
		for form, label := range s.forms {
			if i := strings.Index(tx.body, form); i >= 0 {
				out = append(out, fmt.Sprintf("%s leaked into %s: ...%s...", label, tx.where, excerpt(tx.body, i, len(form))))
			}
		}
	}
	return out
}

// check fails the test for every leak.
func (s *secrets) check(t *testing.T) {
	t.Helper()
	leaks := s.leaks()
	for i, l := range leaks {
		if i == 20 {
			t.Errorf("... and %d more", len(leaks)-20)
			break
		}
		t.Error(l)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Logf("searched %d texts (%d bytes) for %d secret forms; %d leaks", len(s.texts), s.size(), len(s.forms), len(leaks))
}

func (s *secrets) size() int {
	n := 0
	for _, tx := range s.texts {
		n += len(tx.body)
	}
	return n
}

func excerpt(s string, i, n int) string {
	return s[max(0, i-60):min(len(s), i+n+20)]
}

// addKeyring records every key in the keyring file at path.
func addKeyring(t *testing.T, sec *secrets, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Versions []struct {
			Version int64  `json:"version"`
			Key     []byte `json:"key"`
		} `json:"versions"`
	}
	if err := json.Unmarshal(b, &k); err != nil {
		t.Fatalf("read keyring keys: %v", err)
	}
	for _, v := range k.Versions {
		if len(v.Key) != 32 {
			t.Fatalf("keyring version %d has a %d-byte key", v.Version, len(v.Key))
		}
		sec.add(fmt.Sprintf("keyring key v%d", v.Version), v.Key)
	}
}

// exercise drives the plugin through everything that logs: round trips of
// recorded plaintexts, every kind of bad input, and the conformance kit.
// Every gRPC error string is recorded.
func exercise(t *testing.T, sec *secrets, c kmsapi.KeyManagementServiceClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errText := func(what string, err error) {
		if err != nil {
			sec.seen("gRPC error of "+what, err.Error())
		}
	}
	for i, n := range []int{32, 32, 32, 16, 64, 200} {
		pt := randomSecret(n)
		sec.add(fmt.Sprintf("plaintext %d", i), pt)
		enc, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: pt, Uid: fmt.Sprintf("uid-%d", i)})
		if err != nil {
			t.Fatalf("Encrypt = %v", err)
		}
		ct, id := enc.GetCiphertext(), enc.GetKeyId()
		dec, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: ct, KeyId: id, Annotations: enc.GetAnnotations(), Uid: "ok"})
		if err != nil || !bytes.Equal(dec.GetPlaintext(), pt) {
			t.Fatalf("Decrypt = %v", err)
		}
		flipped := slices.Clone(ct)
		flipped[len(flipped)-1] ^= 1
		bad := []*kmsapi.DecryptRequest{
			{Ciphertext: flipped, KeyId: id},
			{Ciphertext: ct[:len(ct)/2], KeyId: id},
			{Ciphertext: nil, KeyId: id},
			{Ciphertext: ct, KeyId: id + "x"},
			{Ciphertext: ct, KeyId: ""},
			{Ciphertext: append(slices.Clone(ct), make([]byte, 2000)...), KeyId: id},
			{Ciphertext: randomSecret(len(ct)), KeyId: id},
		}
		for j, req := range bad {
			req.Uid = fmt.Sprintf("bad-%d-%d", i, j)
			_, err := c.Decrypt(ctx, req)
			if err == nil {
				t.Fatalf("Decrypt(bad input %d) succeeded", j)
			}
			errText("a bad Decrypt", err)
		}
	}
	// Plaintexts the plugin must refuse: their bytes must not come back.
	huge := randomSecret(4096)
	sec.add("oversized plaintext", huge)
	_, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: huge, Uid: "huge"})
	if err == nil {
		t.Fatal("Encrypt(4 KiB) succeeded")
	}
	errText("an oversized Encrypt", err)
	_, err = c.Encrypt(ctx, &kmsapi.EncryptRequest{Uid: "empty"})
	errText("an empty Encrypt", err)

	rep := conformance.Run(ctx, c, conformance.Options{Concurrency: 8, RoundTrips: 2, StatusPolls: 2, PollEvery: 10 * time.Millisecond,
		OnResult: func(r conformance.Result) { sec.seen("conformance result "+r.Name, r.Detail) }})
	if !rep.OK() {
		t.Errorf("conformance during the leak test: %s", rep.Summary())
	}
}

func randomSecret(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// recordHTTP records the health and metrics bodies.
func recordHTTP(t *testing.T, sec *secrets, p *plugintest.Plugin) {
	t.Helper()
	for _, path := range []string{"/healthz", "/readyz", "/livez", "/metrics"} {
		_, body := p.Get(t, path)
		sec.seen("GET "+path, body)
	}
}

func kmsctl(t *testing.T, sec *secrets, args ...string) string {
	t.Helper()
	out := plugintest.MustKmsctl(t, args...)
	sec.seen("kmsctl "+strings.Join(args, " "), out)
	return out
}

// TestNoSecretsInLogsLocal covers the local provider.
func TestNoSecretsInLogsLocal(t *testing.T) {
	sec := &secrets{}
	path := plugintest.NewKeyring(t)
	kmsctl(t, sec, "keyring", "rotate", "--keyring", path)
	p := plugintest.Start(t, "--keyring", path, "--keyring-reload-interval", "100ms")
	defer func() { sec.seen("kms-plugin log", p.Logs.String()); sec.check(t) }()

	exercise(t, sec, p.Client)
	kmsctl(t, sec, "status", "--endpoint", p.Endpoint)
	kmsctl(t, sec, "keyring", "list", "--keyring", path)
	kmsctl(t, sec, "keyring", "list", "--keyring", path, "-o", "json")

	// Rotations, then reload errors from files that hold key bytes.
	for range 2 {
		id := strings.TrimSpace(kmsctl(t, sec, "keyring", "rotate", "--keyring", path))
		plugintest.WaitFor(t, 10*time.Second, "the rotated key", func() bool { return plugintest.StatusKeyID(t, p.Client) == id })
	}
	addKeyring(t, sec, path)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A key with a character that is not base64, one cut short, a key where
	// a number belongs, a truncated file and a bad checksum: each error
	// message is built from the file's content, so each could echo a key.
	var firstKey string
	var doc map[string]any
	if err := json.Unmarshal(good, &doc); err != nil {
		t.Fatal(err)
	}
	firstKey = doc["versions"].([]any)[0].(map[string]any)["key"].(string)
	broken := map[string][]byte{
		"bad base64":    bytes.Replace(good, []byte(firstKey), []byte(firstKey[:10]+"!"+firstKey[11:]), 1),
		"short key":     bytes.Replace(good, []byte(firstKey), []byte(firstKey[:20]), 1),
		"key as state":  bytes.Replace(good, []byte(`"state": "active"`), []byte(`"state": "`+firstKey+`"`), 1),
		"key as number": bytes.Replace(good, []byte(`"version": 1,`), []byte(`"version": "`+firstKey+`",`), 1),
		"truncated":     good[:len(good)*2/3],
		"bad checksum":  bytes.Replace(good, []byte(`"sha256:`), []byte(`"sha256:00`), 1),
		"unknown field": bytes.Replace(good, []byte(`"kind":`), []byte(`"`+firstKey+`": 1, "kind":`), 1),
	}
	for _, name := range sortedKeys(broken) {
		replaceFile(t, path, broken[name])
		plugintest.WaitFor(t, 10*time.Second, "a degraded /healthz for "+name, func() bool {
			code, body := p.Get(t, "/healthz")
			if code == http.StatusServiceUnavailable {
				sec.seen("/healthz with a "+name+" keyring", body)
				return true
			}
			return false
		})
		out, _ := plugintest.Kmsctl(t, "keyring", "list", "--keyring", path)
		sec.seen("kmsctl keyring list of a "+name+" keyring", out)
		out, _ = plugintest.Kmsctl(t, "keyring", "rotate", "--keyring", path)
		sec.seen("kmsctl keyring rotate of a "+name+" keyring", out)
		recordHTTP(t, sec, p)
	}
	replaceFile(t, path, good)
	plugintest.WaitFor(t, 10*time.Second, "a healthy plugin", func() bool { c, _ := p.Get(t, "/healthz"); return c == http.StatusOK })
	exercise(t, sec, p.Client)
	recordHTTP(t, sec, p)
	p.Stop(t)
}

func replaceFile(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".leak-tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestSecretsCheckerFindsLeaks guards the checker itself: a secret in any
// recorded form is found.
func TestSecretsCheckerFindsLeaks(t *testing.T) {
	key := randomSecret(32)
	for _, form := range []string{string(key), hex.EncodeToString(key), base64.StdEncoding.EncodeToString(key), fmt.Sprintf("%v", key), fmt.Sprintf("%q", key)} {
		sec := &secrets{}
		sec.add("key", key)
		sec.seen("log", "level=debug msg=x value="+form)
		if len(sec.leaks()) == 0 {
			t.Errorf("the checker missed a key written as %.20q...", form)
		}
	}
}
