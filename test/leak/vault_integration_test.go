//go:build integration

package leak

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kms-plugin/kms-plugin/providers/vault"
	"github.com/kms-plugin/kms-plugin/test/plugintest"
	"github.com/kms-plugin/kms-plugin/test/vaultserver"
)

func startVault(t *testing.T) (*vaultserver.Server, *api.Client) {
	t.Helper()
	s := vaultserver.StartTransit(t, vaultserver.Options{}, "transit", "kms")
	hcl, err := vault.Policy(vault.RolePlugin, "transit", "kms")
	if err != nil {
		t.Fatal(err)
	}
	s.WritePolicy(t, "kms-plugin", hcl)
	return s, s.Client(t)
}

func writeSecretFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestNoSecretsInLogsVaultToken runs the Vault provider with token auth:
// a good token, then a bogus one written to the token file, then a revoked
// one, then a good one again. No token and no plaintext may show.
func TestNoSecretsInLogsVaultToken(t *testing.T) {
	s, root := startVault(t)
	sec := &secrets{}
	newToken := func() string {
		tok, err := root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"kms-plugin"}, TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		sec.addString("Vault token", tok.Auth.ClientToken)
		sec.addString("Vault token accessor", tok.Auth.Accessor)
		return tok.Auth.ClientToken
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	first := newToken()
	writeSecretFile(t, tokenFile, first+"\n")

	p := plugintest.Start(t, "--provider", "vault", "--vault-addr", s.Addr, "--vault-key", "kms",
		"--vault-token-file", tokenFile, "--vault-refresh-interval", "200ms", "--vault-timeout", "1s")
	defer func() { sec.seen("kms-plugin log", p.Logs.String()); sec.check(t) }()
	exercise(t, sec, p.Client)
	recordHTTP(t, sec, p)

	// A bogus token in the file: Vault refuses it, the plugin says so.
	bogus := "hvs.CAESIL3akTestBogusTokenThatMustNeverBeLogged0000"
	sec.addString("bogus Vault token", bogus)
	writeSecretFile(t, tokenFile, bogus)
	plugintest.WaitFor(t, 15*time.Second, "the plugin to report the refused token", func() bool {
		code, body := p.Get(t, "/healthz")
		sec.seen("/healthz with a bogus token", body)
		return code != http.StatusOK
	})
	recordHTTP(t, sec, p)
	sec.seen("Status with a bogus token", statusText(t, p))
	t.Logf("with a bogus token: %s", statusText(t, p))

	// A good token again, then revoke it behind the plugin's back.
	second := newToken()
	writeSecretFile(t, tokenFile, second)
	plugintest.WaitFor(t, 15*time.Second, "the plugin to recover with a good token", func() bool {
		code, _ := p.Get(t, "/healthz")
		return code == http.StatusOK
	})
	exercise(t, sec, p.Client)
	if err := root.Auth().Token().RevokeTree(second); err != nil {
		t.Fatal(err)
	}
	plugintest.WaitFor(t, 15*time.Second, "the plugin to report the revoked token", func() bool {
		code, body := p.Get(t, "/healthz")
		sec.seen("/healthz with a revoked token", body)
		return code != http.StatusOK
	})
	sec.seen("Status with a revoked token", statusText(t, p))
	t.Logf("with a revoked token: %s", statusText(t, p))
	writeSecretFile(t, tokenFile, newToken())
	plugintest.WaitFor(t, 15*time.Second, "the plugin to recover", func() bool {
		code, _ := p.Get(t, "/healthz")
		return code == http.StatusOK
	})
	exercise(t, sec, p.Client)
	recordHTTP(t, sec, p)
	p.Stop(t)
}

// TestNoSecretsInLogsVaultAppRole runs the Vault provider with AppRole:
// logins, a revoked token that forces a re-login, and a wrong secret_id.
func TestNoSecretsInLogsVaultAppRole(t *testing.T) {
	s, root := startVault(t)
	sec := &secrets{}
	ar := s.EnableAppRole(t, "kms-plugin", time.Hour)
	secretID, roleIDFile, secretIDFile := ar.SecretID, ar.RoleIDFile, ar.SecretIDFile
	sec.addString("AppRole secret_id", secretID)
	sec.addString("AppRole secret_id accessor", ar.SecretIDAccessor)

	p := plugintest.Start(t, "--provider", "vault", "--vault-addr", s.Addr, "--vault-key", "kms",
		"--vault-auth", "approle", "--vault-role-id-file", roleIDFile, "--vault-secret-id-file", secretIDFile,
		"--vault-refresh-interval", "200ms", "--vault-timeout", "1s")
	defer func() { sec.seen("kms-plugin log", p.Logs.String()); sec.check(t) }()
	exercise(t, sec, p.Client)

	// Every token the plugin got, revoked: it must log in again.
	wrong := "00000000-1111-2222-3333-444444444444"
	sec.addString("wrong secret_id", wrong)
	writeSecretFile(t, secretIDFile, wrong)
	if _, err := root.Logical().Write("sys/leases/revoke-prefix/auth/approle/login", nil); err != nil {
		t.Fatal(err)
	}
	plugintest.WaitFor(t, 20*time.Second, "the plugin to report the failed login", func() bool {
		code, body := p.Get(t, "/healthz")
		sec.seen("/healthz after a failed login", body)
		return code != http.StatusOK
	})
	sec.seen("Status after a failed login", statusText(t, p))
	t.Logf("after a failed login: %s", statusText(t, p))
	recordHTTP(t, sec, p)
	writeSecretFile(t, secretIDFile, secretID)
	plugintest.WaitFor(t, 30*time.Second, "the plugin to log in again", func() bool {
		code, _ := p.Get(t, "/healthz")
		return code == http.StatusOK
	})
	exercise(t, sec, p.Client)
	recordHTTP(t, sec, p)
	p.Stop(t)
}

// statusText is Status' healthz or error string.
func statusText(t *testing.T, p *plugintest.Plugin) string {
	t.Helper()
	out, err := plugintest.Kmsctl(t, "status", "--endpoint", p.Endpoint)
	if err != nil {
		return out + " " + err.Error()
	}
	return strings.TrimSpace(out)
}
