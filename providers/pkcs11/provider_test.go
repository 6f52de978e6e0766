//go:build pkcs11

package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/pkcs11/softhsmtest"
	"github.com/kms-plugin/kms-plugin/providers/providertest"
)

var labelSeq atomic.Int64

// config is a provider configuration for tk with a key label of its own.
func config(tk *softhsmtest.Token) Config {
	cfg := DefaultConfig()
	cfg.Module = tk.Module
	cfg.TokenLabel = tk.Label
	cfg.PINFile = tk.PINFile
	cfg.KeyLabel = fmt.Sprintf("kek-%d", labelSeq.Add(1))
	cfg.RefreshInterval = time.Hour
	return cfg
}

// open makes the first version of cfg's key and returns a provider on it.
func open(t *testing.T, cfg Config) *Provider {
	t.Helper()
	admin, err := New(t.Context(), cfg.ForOperator(), providers.Env{})
	if err != nil {
		t.Fatalf("New(operator) = %v", err)
	}
	_, err = admin.Rotate(t.Context())
	_ = admin.Close()
	if err != nil {
		t.Fatalf("Rotate() = %v", err)
	}
	p, err := New(t.Context(), cfg, providers.Env{})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	return p
}

func TestProviderSuite(t *testing.T) {
	tk := softhsmtest.New(t, "")
	providertest.Run(t, func(t *testing.T) providers.Provider { return open(t, config(tk)) })
}

func TestKeyIDFormAndKeyProperties(t *testing.T) {
	tk := softhsmtest.New(t, "kms token/1")
	cfg := config(tk)
	p := open(t, cfg)
	defer p.Close()
	k, err := p.Current()
	if err != nil {
		t.Fatal(err)
	}
	want := "pkcs11:kms_token_1/" + cfg.KeyLabel + ":v1:"
	if !strings.HasPrefix(k.ID, want) || len(k.ID) != len(want)+checkHexDigits {
		t.Errorf("key_id = %q, want %s<16 hex digits>", k.ID, want)
	}
	// SoftHSM 2.6 does not return CKA_START_DATE; a token that does
	// gives the day the version was generated.
	if !k.Created.IsZero() && time.Since(k.Created) > 48*time.Hour {
		t.Errorf("Created = %v, want today or unknown", k.Created)
	}
	// The key object as the token holds it: sensitive, never extractable.
	ks := p.keys.Load()
	err = p.withSession(t.Context(), "test", func(sh sessionHandle) error {
		return assertKeyObject(p, sh, ks.versions[1].handle)
	})
	if err != nil {
		t.Error(err)
	}
}

func TestKeyIDDiffersForAnotherKeyUnderTheSameName(t *testing.T) {
	tk := softhsmtest.New(t, "")
	cfg := config(tk)
	p := open(t, cfg)
	defer p.Close()
	first, _ := p.Current()
	ct, err := p.Encrypt(t.Context(), first, []byte("sealed under the first key v1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Destroy version 1 and generate a new version 1 under the same label.
	h := p.keys.Load().versions[1].handle
	if err := p.withSession(t.Context(), "test", func(sh sessionHandle) error { return p.mod.ctx.DestroyObject(sh, h) }); err != nil {
		t.Fatal(err)
	}
	// The plugin first takes every version vanishing for a removed token,
	// reconnects, then believes it; generate the new version after that.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := p.Rotate(t.Context())
		if err == nil {
			break
		}
		if !errors.Is(err, providers.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Rotate() after destroying the only version = %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	second, _ := p.Current()
	if second.ID == first.ID || !bytes.Equal(second.Ref, first.Ref) {
		t.Fatalf("a new key under the same label and version has key_id %q, the old one had %q; want the same version and different key_ids", second.ID, first.ID)
	}
	if _, err := p.Decrypt(t.Context(), first, ct, nil); !errors.Is(err, providers.ErrKeyNotFound) {
		t.Errorf("Decrypt under the destroyed key's key_id = %v, want ErrKeyNotFound", err)
	}
}

func TestRotationSeenByAnotherPluginWithoutRestart(t *testing.T) {
	tk := softhsmtest.New(t, "")
	cfg := config(tk)
	a := open(t, cfg)
	defer a.Close()
	cfg.RefreshInterval = 50 * time.Millisecond
	b, err := New(t.Context(), cfg, providers.Env{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	old, _ := b.Current()
	nk, err := a.Rotate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// b decrypts the new version at once (it reads the token on an
	// unknown, newer version) ...
	ct, err := a.Encrypt(t.Context(), nk, []byte("sealed by a under the new key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Decrypt(t.Context(), nk, ct, nil); err != nil {
		t.Errorf("b.Decrypt(new version) = %v", err)
	}
	// ... and encrypts with it after its refresh interval.
	deadline := time.Now().Add(5 * time.Second)
	for {
		cur, _ := b.Current()
		if cur.ID == nk.ID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b.Current() = %q after 5s, want %q (was %q)", cur.ID, nk.ID, old.ID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Retiring on a shows on b: the token itself refuses the old version.
	oldCT, err := b.Encrypt(t.Context(), old, []byte("sealed under the old version...."), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.RetireBelow(t.Context(), 2); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Decrypt(t.Context(), old, oldCT, nil); !errors.Is(err, providers.ErrKeyRetired) {
		t.Errorf("b.Decrypt(retired version) = %v, want ErrKeyRetired", err)
	}
}

func TestNoKeyIsAConfigurationError(t *testing.T) {
	tk := softhsmtest.New(t, "")
	_, err := New(t.Context(), config(tk), providers.Env{})
	if !errors.Is(err, providers.ErrNotConfigured) || !strings.Contains(err.Error(), "kmsctl pkcs11 rotate") {
		t.Errorf("New() on a token without the key = %v, want ErrNotConfigured saying how to make the key", err)
	}
}

func TestPINNeverInErrors(t *testing.T) {
	tk := softhsmtest.New(t, "")
	cfg := config(tk)
	wrong := "wrong-pin-" + tk.PIN
	if err := os.WriteFile(tk.PINFile, []byte(wrong), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(t.Context(), cfg.ForOperator(), providers.Env{})
	if err == nil {
		t.Fatal("New with a wrong PIN succeeded")
	}
	if !errors.Is(err, providers.ErrPermissionDenied) || !strings.Contains(err.Error(), "CKR_PIN_INCORRECT") {
		t.Errorf("New with a wrong PIN = %v, want ErrPermissionDenied naming CKR_PIN_INCORRECT", err)
	}
	if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), tk.PIN) {
		t.Errorf("error contains the PIN: %v", err)
	}
	if err := os.Chmod(tk.PINFile, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := New(t.Context(), cfg, providers.Env{}); !errors.Is(err, providers.ErrNotConfigured) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("New with a group-readable PIN file = %v, want a refusal that says chmod 600", err)
	}
}

func TestTokenNotFound(t *testing.T) {
	tk := softhsmtest.New(t, "")
	cfg := config(tk)
	cfg.TokenLabel = "no-such-token"
	_, err := New(t.Context(), cfg.ForOperator(), providers.Env{})
	if !errors.Is(err, providers.ErrUnavailable) || !strings.Contains(err.Error(), tk.Label) {
		t.Errorf("New with an unknown token label = %v, want ErrUnavailable listing the tokens present", err)
	}
}

func TestBadModule(t *testing.T) {
	tk := softhsmtest.New(t, "")
	cfg := config(tk)
	cfg.Module = tk.PINFile // not a library
	if _, err := New(t.Context(), cfg, providers.Env{}); !errors.Is(err, providers.ErrNotConfigured) || !strings.Contains(err.Error(), "could not be loaded") {
		t.Errorf("New with a file that is no module = %v, want ErrNotConfigured", err)
	}
}

func TestOversizedAndEmptyPlaintextRefused(t *testing.T) {
	tk := softhsmtest.New(t, "")
	p := open(t, config(tk))
	defer p.Close()
	k, _ := p.Current()
	for _, n := range []int{0, maxPlaintext + 1} {
		if _, err := p.Encrypt(t.Context(), k, make([]byte, n), nil); !errors.Is(err, providers.ErrInvalidArgument) {
			t.Errorf("Encrypt(%d bytes) = %v, want ErrInvalidArgument", n, err)
		}
	}
}

func TestTokenRemovedThenBack(t *testing.T) {
	tk := softhsmtest.New(t, "")
	cfg := config(tk)
	cfg.RefreshInterval = 50 * time.Millisecond
	p := open(t, cfg)
	defer p.Close()
	k, _ := p.Current()
	ct, err := p.Encrypt(t.Context(), k, []byte("sealed before the token left"), nil)
	if err != nil {
		t.Fatal(err)
	}
	putBack := tk.Remove(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for p.Check(ctx) == nil {
		if ctx.Err() != nil {
			t.Fatal("Check() stayed healthy for 10s with the token removed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.Check(ctx); !errors.Is(err, providers.ErrUnavailable) {
		t.Errorf("Check() with the token removed = %v, want ErrUnavailable", err)
	}
	if _, err := p.Decrypt(ctx, k, ct, nil); !errors.Is(err, providers.ErrUnavailable) {
		t.Errorf("Decrypt with the token removed = %v, want ErrUnavailable", err)
	}
	putBack()
	for p.Check(ctx) != nil {
		if ctx.Err() != nil {
			t.Fatalf("Check() did not recover within 10s of the token coming back: %v", p.Check(t.Context()))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pt, err := p.Decrypt(ctx, k, ct, nil); err != nil || string(pt) != "sealed before the token left" {
		t.Errorf("Decrypt after recovery = %q, %v", pt, err)
	}
}

// TestModuleFailuresRecover breaks the module under the provider: its
// sessions closed behind its back (CKR_SESSION_HANDLE_INVALID) and the
// module finalized (CKR_CRYPTOKI_NOT_INITIALIZED). Each gives
// ErrUnavailable, and the provider reopens its sessions, logs in again
// and serves, without a restart.
func TestModuleFailuresRecover(t *testing.T) {
	tk := softhsmtest.New(t, "")
	cfg := config(tk)
	p := open(t, cfg)
	defer p.Close()
	k, _ := p.Current()
	ct, err := p.Encrypt(t.Context(), k, []byte("sealed before the module broke"), nil)
	if err != nil {
		t.Fatal(err)
	}
	faults := map[string]func() error{
		"sessions closed": func() error {
			tok, err := p.Token()
			if err != nil {
				return err
			}
			return p.mod.ctx.CloseAllSessions(tok.Slot)
		},
		"module finalized": func() error { return p.mod.ctx.Finalize() },
	}
	for name, fault := range faults {
		if err := fault(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := p.Decrypt(t.Context(), k, ct, nil); !errors.Is(err, providers.ErrUnavailable) {
			t.Errorf("%s: Decrypt = %v, want ErrUnavailable", name, err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		for p.Check(ctx) != nil && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		if err := p.Check(t.Context()); err != nil {
			t.Fatalf("%s: Check() did not recover within 10s: %v", name, err)
		}
		if pt, err := p.Decrypt(t.Context(), k, ct, nil); err != nil || string(pt) != "sealed before the module broke" {
			t.Errorf("%s: Decrypt after recovery = %q, %v", name, pt, err)
		}
		if cur, _ := p.Current(); cur.ID != k.ID {
			t.Errorf("%s: key_id after recovery = %q, want %q", name, cur.ID, k.ID)
		}
	}
}

// TestPINChangedOnTheToken: the user PIN changes on the token, then the
// sessions are lost. The provider does not log in again with the refused
// PIN (a token locks a PIN after a few wrong tries); once the new PIN is in
// the PIN file, it logs in and serves without a restart.
func TestPINChangedOnTheToken(t *testing.T) {
	tk := softhsmtest.New(t, "")
	cfg := config(tk)
	p := open(t, cfg)
	defer p.Close()
	newPIN := "changed-" + tk.PIN
	err := p.withSession(t.Context(), "test", func(sh sessionHandle) error { return p.mod.ctx.SetPIN(sh, tk.PIN, newPIN) })
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := p.Token()
	if err := p.mod.ctx.CloseAllSessions(tok.Slot); err != nil {
		t.Fatal(err)
	}
	_ = p.Check(t.Context()) // finds the sessions gone
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for !strings.Contains(fmt.Sprint(p.Check(ctx)), "not logging in again") {
		if ctx.Err() != nil {
			t.Fatalf("Check() = %v; want the refusal to log in again with the refused PIN", p.Check(t.Context()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.Check(ctx); !errors.Is(err, providers.ErrUnavailable) || strings.Contains(err.Error(), tk.PIN) {
		t.Errorf("Check() with the old PIN = %v, want ErrUnavailable without the PIN", err)
	}
	if err := os.WriteFile(tk.PINFile, []byte(newPIN), 0o600); err != nil {
		t.Fatal(err)
	}
	for p.Check(ctx) != nil {
		if ctx.Err() != nil {
			t.Fatalf("Check() did not recover with the new PIN in the file: %v", p.Check(t.Context()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
