//go:build pkcs11

package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/pkcs11"
	"github.com/kms-plugin/kms-plugin/providers/pkcs11/softhsmtest"
)

// TestPKCS11Commands runs rotate, keys and retire against a SoftHSM token
// while a provider (as in a running plugin) serves: the rotation reaches
// the provider's current key_id without a restart.
func TestPKCS11Commands(t *testing.T) {
	tk := softhsmtest.New(t, "")
	flags := tk.PluginArgs("kek")
	ctl := func(args ...string) (string, error) {
		return kmsctl(append(append([]string{"pkcs11"}, args...), flags...)...)
	}

	out, err := ctl("rotate")
	if err != nil || !strings.Contains(out, "pkcs11:"+tk.Label+"/kek:v1:") {
		t.Fatalf("kmsctl pkcs11 rotate on an empty token = %q, %v; want the v1 key_id", out, err)
	}
	if strings.Contains(out, tk.PIN) {
		t.Errorf("kmsctl output contains the PIN: %q", out)
	}

	// A wrong PIN: a clear refusal that does not contain the PIN. (Before
	// any provider of this process logs in: a login holds for the whole
	// process, and the token then does not check the PIN again.)
	wrong := "not-the-pin-" + tk.PIN
	bad := writePIN(t, wrong)
	_, err = kmsctl("pkcs11", "keys", "--pkcs11-module", tk.Module, "--pkcs11-token-label", tk.Label, "--pkcs11-pin-file", bad, "--pkcs11-key-label", "kek")
	if err == nil || !strings.Contains(err.Error(), "CKR_PIN_INCORRECT") || strings.Contains(err.Error(), wrong) {
		t.Errorf("kmsctl pkcs11 keys with a wrong PIN = %v; want CKR_PIN_INCORRECT without the PIN", err)
	}

	cfg := pkcs11.DefaultConfig()
	cfg.Module, cfg.TokenLabel, cfg.PINFile, cfg.KeyLabel = tk.Module, tk.Label, tk.PINFile, "kek"
	cfg.RefreshInterval = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	plugin, err := pkcs11.New(ctx, cfg, providers.Env{})
	if err != nil {
		t.Fatal(err)
	}
	defer plugin.Close()
	k1, _ := plugin.Current()
	ct, err := plugin.Encrypt(ctx, k1, []byte("old"), nil)
	if err != nil {
		t.Fatal(err)
	}

	out, err = ctl("rotate")
	if err != nil || !strings.Contains(out, "pkcs11:"+tk.Label+"/kek:v2:") {
		t.Fatalf("kmsctl pkcs11 rotate = %q, %v; want the v2 key_id", out, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if k, _ := plugin.Current(); string(k.Ref) == "2" && strings.Contains(out, k.ID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the running provider never saw the rotation")
		}
	}
	if got, err := plugin.Decrypt(ctx, k1, ct, nil); err != nil || string(got) != "old" {
		t.Errorf("Decrypt(old ciphertext) after rotate = %q, %v", got, err)
	}

	if _, err := ctl("retire", "--below", "3"); err == nil {
		t.Errorf("kmsctl pkcs11 retire --below 3 with current 2 succeeded")
	}
	if out, err := ctl("retire", "--below", "2"); err != nil {
		t.Fatalf("kmsctl pkcs11 retire --below 2 = %q, %v", out, err)
	}
	out, err = ctl("keys", "-o", "json")
	if err != nil {
		t.Fatalf("kmsctl pkcs11 keys -o json = %v", err)
	}
	var st pkcs11Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("keys -o json: %v\n%s", err, out)
	}
	if st.Token.Label != tk.Label || len(st.Versions) != 2 || st.Versions[0].State != providers.StateRetired || st.Versions[1].State != providers.StatePrimary {
		t.Errorf("keys after retire = %+v; want v1 retired, v2 primary", st)
	}
	if _, err := plugin.Decrypt(ctx, k1, ct, nil); err == nil {
		t.Errorf("Decrypt under the retired version succeeded")
	}
	out, err = ctl("keys")
	if err != nil || !strings.Contains(out, "VERSION") || !strings.Contains(out, "retired") {
		t.Errorf("kmsctl pkcs11 keys = %q, %v", out, err)
	}

}
