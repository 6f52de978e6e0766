package verify

import (
	"testing"

	"google.golang.org/protobuf/proto"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
)

func kmsv2Value(t *testing.T, provider, keyID string) []byte {
	t.Helper()
	b, err := proto.Marshal(&kmstypes.EncryptedObject{
		EncryptedData:      []byte("ciphertext"),
		KeyID:              keyID,
		EncryptedDEKSource: []byte("wrapped seed"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte("k8s:enc:kms:v2:"+provider+":"), b...)
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte
		want Class
	}{
		{"protobuf plaintext", []byte("k8s\x00\n\x0c\n\x02v1\x12\x06Secret"), Class{Type: Identity, Encoding: "protobuf"}},
		{"json plaintext", []byte(`{"kind":"Secret","apiVersion":"v1"}`), Class{Type: Identity, Encoding: "json"}},
		{"json plaintext with leading space", []byte("\n {\"kind\":\"Widget\"}"), Class{Type: Identity, Encoding: "json"}},
		{"cbor plaintext", []byte{0xd9, 0xd9, 0xf7, 0xa1}, Class{Type: Identity, Encoding: "cbor"}},
		{"aescbc", []byte("k8s:enc:aescbc:v1:key1:\x01\x02\x03"), Class{Type: AESCBC, Key: "key1"}},
		{"aesgcm", []byte("k8s:enc:aesgcm:v1:gcm-key:\x00"), Class{Type: AESGCM, Key: "gcm-key"}},
		{"secretbox", []byte("k8s:enc:secretbox:v1:box:\xff\xfe"), Class{Type: Secretbox, Key: "box"}},
		{"kms v1", []byte("k8s:enc:kms:v1:old-kms:\x00\x20rest"), Class{Type: KMSv1, Provider: "old-kms"}},
		{"kms v2", kmsv2Value(t, "kms-plugin", "local:56b739be81cc20e3:v2"), Class{Type: KMSv2, Provider: "kms-plugin", KeyID: "local:56b739be81cc20e3:v2"}},
		{"kms v2 vault", kmsv2Value(t, "vault", "vault:transit/k8s:v3:1732492800"), Class{Type: KMSv2, Provider: "vault", KeyID: "vault:transit/k8s:v3:1732492800"}},
		{"kms v2 damaged", []byte("k8s:enc:kms:v2:kms-plugin:\xff\xff\xff"), Class{Type: KMSv2, Provider: "kms-plugin", Problem: "EncryptedObject does not parse"}},
		{"kms v2 without keyID", []byte("k8s:enc:kms:v2:kms-plugin:"), Class{Type: KMSv2, Provider: "kms-plugin", Problem: "EncryptedObject has no keyID"}},
		{"unknown prefix", []byte("k8s:enc:rot13:v1:x:abc"), Class{Type: Unknown, Problem: `unknown encryption prefix "rot13:v1:x:"`}},
		{"truncated prefix", []byte("k8s:enc:kms:v2"), Class{Type: Unknown, Problem: `truncated encryption prefix "kms:v2"`}},
		{"garbage", []byte("\x00\x01garbage"), Class{Type: Unknown, Problem: `value starts with "\x00\x01garbage"`}},
		{"empty", nil, Class{Type: Unknown, Problem: `value starts with ""`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(tt.raw)
			// Only the start of a parse error is stable across protobuf versions.
			if tt.want.Problem != "" && len(got.Problem) > len(tt.want.Problem) {
				got.Problem = got.Problem[:len(tt.want.Problem)]
			}
			if got != tt.want {
				t.Errorf("Classify(%q) = %+v, want %+v", tt.raw, got, tt.want)
			}
		})
	}
}

func TestExpectMet(t *testing.T) {
	v2 := Class{Type: KMSv2, Provider: "kms-plugin", KeyID: "B"}
	tests := []struct {
		name   string
		expect Expect
		class  Class
		want   bool
	}{
		{"no expectation", Expect{}, Class{Type: Identity}, true},
		{"provider name matches", Expect{Providers: []string{"kms-plugin"}}, v2, true},
		{"other provider", Expect{Providers: []string{"vault"}}, v2, false},
		{"type as provider", Expect{Providers: []string{"identity"}}, Class{Type: Identity}, true},
		{"plaintext against provider", Expect{Providers: []string{"kms-plugin"}}, Class{Type: Identity}, false},
		{"aescbc key name is not a provider", Expect{Providers: []string{"key1"}}, Class{Type: AESCBC, Key: "key1"}, false},
		{"key id matches", Expect{KeyIDs: []string{"A", "B"}}, v2, true},
		{"old key id", Expect{KeyIDs: []string{"B"}}, Class{Type: KMSv2, Provider: "kms-plugin", KeyID: "A"}, false},
		{"plaintext against key id", Expect{KeyIDs: []string{"B"}}, Class{Type: Identity}, false},
		{"kms v1 against key id", Expect{KeyIDs: []string{"B"}}, Class{Type: KMSv1, Provider: "kms-plugin"}, false},
		{"both", Expect{Providers: []string{"kms-plugin"}, KeyIDs: []string{"B"}}, v2, true},
		{"damaged never meets", Expect{Providers: []string{"kms-plugin"}}, Class{Type: KMSv2, Provider: "kms-plugin", Problem: "x"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.expect.Met(tt.class); got != tt.want {
				t.Errorf("%+v.Met(%+v) = %v, want %v", tt.expect, tt.class, got, tt.want)
			}
		})
	}
}

func TestKeyPrefix(t *testing.T) {
	tests := []struct{ resource, want string }{
		{"secrets", "/registry/secrets/"},
		{"configmaps", "/registry/configmaps/"},
		{"services", "/registry/services/specs/"},
		{"endpoints", "/registry/services/endpoints/"},
		{"nodes", "/registry/minions/"},
		{"replicationcontrollers", "/registry/controllers/"},
		{"deployments.apps", "/registry/deployments/"},
		{"ingresses.networking.k8s.io", "/registry/ingress/"},
		{"clusterroles.rbac.authorization.k8s.io", "/registry/clusterroles/"},
		{"customresourcedefinitions.apiextensions.k8s.io", "/registry/apiextensions.k8s.io/customresourcedefinitions/"},
		{"apiservices.apiregistration.k8s.io", "/registry/apiregistration.k8s.io/apiservices/"},
		{"widgets.example.com", "/registry/example.com/widgets/"},
		{"volumesnapshots.snapshot.storage.k8s.io", "/registry/snapshot.storage.k8s.io/volumesnapshots/"},
		{"/custom/prefix", "/custom/prefix/"},
	}
	for _, tt := range tests {
		got, err := KeyPrefix("/registry/", tt.resource)
		if err != nil || got != tt.want {
			t.Errorf("KeyPrefix(/registry/, %q) = %q, %v, want %q", tt.resource, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "*.apps", "*.*", "a b"} {
		if _, err := KeyPrefix("/registry", bad); err == nil {
			t.Errorf("KeyPrefix(/registry, %q) succeeded, want an error", bad)
		}
	}
}
