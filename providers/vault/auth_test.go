package vault

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/kms-plugin/kms-plugin/providers"
)

func TestLoginRequests(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	roleID, secretID, jwt := file("role-id", "r-1\n"), file("secret-id", " s-1 \n"), file("jwt", "eyJ.x.y\n")
	tests := []struct {
		name      string
		cfg       Config
		wantMount string
		wantBody  map[string]any
	}{
		{"approle", Config{Auth: AuthAppRole, RoleIDFile: roleID, SecretIDFile: secretID},
			"approle", map[string]any{"role_id": "r-1", "secret_id": "s-1"}},
		{"approle without secret_id (bind_secret_id=false)", Config{Auth: AuthAppRole, RoleIDFile: roleID, AuthMount: "/ar/"},
			"ar", map[string]any{"role_id": "r-1"}},
		{"kubernetes", Config{Auth: AuthKubernetes, Role: "kms", JWTFile: jwt},
			"kubernetes", map[string]any{"role": "kms", "jwt": "eyJ.x.y"}},
		{"jwt at its own mount", Config{Auth: AuthJWT, Role: "kms", JWTFile: jwt, AuthMount: "oidc-k8s"},
			"oidc-k8s", map[string]any{"role": "kms", "jwt": "eyJ.x.y"}},
		{"cert with role", Config{Auth: AuthCert, Role: "kms-plugin"},
			"cert", map[string]any{"name": "kms-plugin"}},
		{"cert without role", Config{Auth: AuthCert},
			"cert", map[string]any{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := newAuthMethod(&tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var gotMount string
			var gotBody map[string]any
			fb := &fakeBackend{login: func(_ context.Context, mount string, body map[string]any) (tokenInfo, error) {
				gotMount, gotBody = mount, body
				return tokenInfo{Token: "t"}, nil
			}}
			if _, err := m.obtain(context.Background(), fb); err != nil {
				t.Fatalf("obtain() = %v", err)
			}
			if gotMount != tc.wantMount || !reflect.DeepEqual(gotBody, tc.wantBody) {
				t.Errorf("login at %q with %v, want %q with %v", gotMount, gotBody, tc.wantMount, tc.wantBody)
			}
		})
	}
}

func TestLoginCredentialFileErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []Config{
		{Auth: AuthAppRole, RoleIDFile: filepath.Join(dir, "missing")},
		{Auth: AuthAppRole, RoleIDFile: empty},
		{Auth: AuthKubernetes, Role: "kms", JWTFile: filepath.Join(dir, "missing")},
	} {
		m, _ := newAuthMethod(&cfg)
		_, err := m.obtain(context.Background(), &fakeBackend{})
		if !errors.Is(err, providers.ErrNotConfigured) {
			t.Errorf("obtain() with %+v = %v, want %v", cfg, err, providers.ErrNotConfigured)
		}
	}
}

func TestKubernetesAuthDefaultsToServiceAccountToken(t *testing.T) {
	m, _ := newAuthMethod(&Config{Auth: AuthKubernetes, Role: "kms"})
	_, err := m.obtain(context.Background(), &fakeBackend{})
	// The default path does not exist here; the error names it.
	if err == nil || !errors.Is(err, providers.ErrNotConfigured) || !containsPath(err, DefaultKubernetesJWTFile) {
		t.Errorf("obtain() = %v, want a not-configured error naming %s", err, DefaultKubernetesJWTFile)
	}
}

func containsPath(err error, path string) bool {
	var pe *os.PathError
	return errors.As(err, &pe) && pe.Path == path
}
