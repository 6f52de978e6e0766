//go:build pkcs11

package leak

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/providers/pkcs11/softhsmtest"
	"github.com/kms-plugin/kms-plugin/test/plugintest"
)

// TestNoSecretsInLogsPKCS11 runs kms-plugin --provider pkcs11 and kmsctl
// pkcs11 through start, load, rotations, retirement, a wrong PIN, a PIN
// file with a bad mode and a removed token: the token's PINs (and the
// plaintexts) appear in no log, error, Status, HTTP body or command output.
func TestNoSecretsInLogsPKCS11(t *testing.T) {
	tk := softhsmtest.New(t, "")
	sec := &secrets{}
	sec.addString("token user PIN", tk.PIN)
	sec.addString("token SO PIN", tk.SOPIN)
	flags := tk.PluginArgs("kek")
	pkcs11ctl := func(args ...string) string {
		return kmsctl(t, sec, append(append([]string{"pkcs11"}, args...), flags...)...)
	}
	pkcs11ctl("rotate")

	p := plugintest.Start(t, append([]string{"--provider", "pkcs11", "--pkcs11-refresh-interval", "200ms"}, flags...)...)
	defer func() { sec.seen("kms-plugin log", p.Logs.String()); sec.check(t) }()
	exercise(t, sec, p.Client)
	recordHTTP(t, sec, p)
	kmsctl(t, sec, "status", "--endpoint", p.Endpoint)
	pkcs11ctl("keys")
	pkcs11ctl("keys", "-o", "json")

	id := strings.TrimPrefix(strings.TrimSpace(pkcs11ctl("rotate")), "generated a new version of kek: new key_id ")
	plugintest.WaitFor(t, 10*time.Second, "the rotated key", func() bool { return plugintest.StatusKeyID(t, p.Client) == id })
	exercise(t, sec, p.Client)
	pkcs11ctl("retire", "--below", "2")
	out, _ := plugintest.Kmsctl(t, append([]string{"pkcs11", "retire", "--below", "9"}, flags...)...)
	sec.seen("kmsctl pkcs11 retire --below 9", out)

	// A wrong PIN, for kmsctl and for a second plugin.
	wrong := "wrong-" + tk.PIN
	sec.addString("wrong PIN", wrong)
	bad := writePIN(t, wrong, 0o600)
	badFlags := []string{"--pkcs11-module", tk.Module, "--pkcs11-token-label", tk.Label, "--pkcs11-pin-file", bad, "--pkcs11-key-label", "kek"}
	out, err := plugintest.Kmsctl(t, append([]string{"pkcs11", "keys"}, badFlags...)...)
	if err == nil || !strings.Contains(out, "CKR_PIN_INCORRECT") {
		t.Errorf("kmsctl pkcs11 keys with a wrong PIN = %v: %s; want CKR_PIN_INCORRECT", err, out)
	}
	sec.seen("kmsctl with a wrong PIN", out)
	if q, err := plugintest.Launch(t, "unix://"+plugintest.SocketDir(t)+"/wrong-pin.sock", append([]string{"--provider", "pkcs11"}, badFlags...)...); err == nil {
		sec.seen("plugin with a wrong PIN", q.Logs.String())
		t.Error("kms-plugin started with a wrong PIN")
	} else {
		sec.seen("plugin with a wrong PIN", err.Error())
	}
	// A PIN file that others may read is refused before it is read.
	loose := writePIN(t, tk.PIN, 0o644)
	out, err = plugintest.Kmsctl(t, "pkcs11", "keys", "--pkcs11-module", tk.Module, "--pkcs11-token-label", tk.Label, "--pkcs11-pin-file", loose)
	if err == nil || !strings.Contains(out, "chmod 600") {
		t.Errorf("kmsctl pkcs11 keys with a 0644 PIN file = %v: %s; want a refusal", err, out)
	}
	sec.seen("kmsctl with a 0644 PIN file", out)

	// The token removed, then back.
	putBack := tk.Remove(t)
	plugintest.WaitFor(t, 10*time.Second, "an unhealthy plugin without its token", func() bool {
		code, body := p.Get(t, "/healthz")
		sec.seen("/healthz without the token", body)
		return code != http.StatusOK
	})
	out, _ = plugintest.Kmsctl(t, "status", "--endpoint", p.Endpoint)
	sec.seen("kmsctl status without the token", out)
	recordHTTP(t, sec, p)
	putBack()
	plugintest.WaitFor(t, 20*time.Second, "a healthy plugin", func() bool { c, _ := p.Get(t, "/healthz"); return c == http.StatusOK })
	exercise(t, sec, p.Client)
	recordHTTP(t, sec, p)
	p.Stop(t)
}

func writePIN(t *testing.T, pin string, mode os.FileMode) string {
	t.Helper()
	f := t.TempDir() + "/pin"
	if err := os.WriteFile(f, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f, mode); err != nil {
		t.Fatal(err)
	}
	return f
}
