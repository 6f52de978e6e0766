//go:build pkcs11

package faults

import (
	"context"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/providers/pkcs11/softhsmtest"
	"github.com/kms-plugin/kms-plugin/test/plugintest"
)

// TestPKCS11TokenRemovedUnderLoad pulls the SoftHSM token out from under a
// kms-plugin --provider pkcs11 that serves load: calls fail with
// Unavailable (never another code, which kube-apiserver would not retry),
// Status and /healthz report the plugin unhealthy, and once the token is
// back the plugin reconnects, logs in again and serves the same key_id
// without a restart.
func TestPKCS11TokenRemovedUnderLoad(t *testing.T) {
	tk := softhsmtest.New(t, "")
	flags := tk.PluginArgs("kek")
	plugintest.MustKmsctl(t, append([]string{"pkcs11", "rotate"}, flags...)...)
	p := plugintest.Start(t, append([]string{"--provider", "pkcs11", "--pkcs11-refresh-interval", "200ms"}, flags...)...)
	id := keyID(t, p.Client)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	seed := []byte("a DEK seed sealed before the token left")
	sealed, err := p.Client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "before"})
	if err != nil {
		t.Fatal(err)
	}

	load := plugintest.StartLoad(p.Client, 8)
	defer load.Stop()
	time.Sleep(300 * time.Millisecond)
	if s := load.Snapshot(); s.Errors != 0 || s.Ops == 0 {
		t.Fatalf("load before the fault: %d calls, %d failed (%v)", s.Ops, s.Errors, s.FirstErrors)
	}

	putBack := tk.Remove(t)
	plugintest.WaitFor(t, 10*time.Second, "/healthz to report the removed token", func() bool {
		code, _ := p.Get(t, "/healthz")
		return code == http.StatusServiceUnavailable
	})
	_, body := p.Get(t, "/healthz")
	t.Logf("token removed; /healthz: %s", body)
	st, err := p.Client.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || st.GetHealthz() == "ok" {
		t.Errorf("Status with the token removed = %v, %v; want an unhealthy healthz", st, err)
	}
	for name, call := range map[string]func() error{
		"Encrypt": func() error {
			_, err := p.Client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "during"})
			return err
		},
		"Decrypt": func() error {
			_, err := p.Client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: sealed.GetCiphertext(), KeyId: sealed.GetKeyId(), Annotations: sealed.GetAnnotations(), Uid: "during"})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.Unavailable {
			t.Errorf("%s with the token removed = %v, want code Unavailable", name, err)
		}
	}

	putBack()
	plugintest.WaitFor(t, 20*time.Second, "/healthz to recover with the token back", func() bool {
		code, _ := p.Get(t, "/healthz")
		return code == http.StatusOK
	})
	if got := keyID(t, p.Client); got != id {
		t.Errorf("key_id after the token came back = %q, want %q", got, id)
	}
	got, err := p.Client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: sealed.GetCiphertext(), KeyId: sealed.GetKeyId(), Annotations: sealed.GetAnnotations(), Uid: "after"})
	if err != nil || string(got.GetPlaintext()) != string(seed) {
		t.Errorf("Decrypt after the token came back = %v; want the seed", err)
	}
	before := load.Snapshot()
	time.Sleep(500 * time.Millisecond)
	after := load.Snapshot()
	if after.Errors != before.Errors || after.Ops-before.Ops < 20 {
		t.Errorf("after recovery: %d calls, %d failed (%v); want the load to run again without errors", after.Ops-before.Ops, after.Errors-before.Errors, after.FirstErrors)
	}
	if m := p.Metrics(t); m[`kms_plugin_pkcs11_reconnects_total{result="ok"}`] < 1 {
		t.Errorf("kms_plugin_pkcs11_reconnects_total{result=\"ok\"} = %v, want at least 1", m[`kms_plugin_pkcs11_reconnects_total{result="ok"}`])
	}
}
