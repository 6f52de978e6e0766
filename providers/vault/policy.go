package vault

import (
	"fmt"
	"strings"

	"github.com/kms-plugin/kms-plugin/providers"
)

// Policy roles accepted by Policy.
const (
	RolePlugin   = "plugin"
	RoleOperator = "operator"
)

// Policy returns the least-privilege Vault policy (HCL) for role on the
// transit key at mount/key. The plugin may encrypt and decrypt with the key
// and read its metadata, nothing else: in particular it lacks "create" on
// encrypt, so it can never recreate a deleted key by encrypting. The
// operator (kmsctl vault) may also rotate the key and change its config
// (min_decryption_version).
func Policy(role, mount, key string) (string, error) {
	mount = strings.Trim(mount, "/")
	if mount == "" || !keyNameRe.MatchString(key) {
		return "", fmt.Errorf("policy for %s/%s: %w", mount, key, providers.ErrInvalidArgument)
	}
	var b strings.Builder
	rule := func(path, capability, why string) {
		fmt.Fprintf(&b, "# %s\npath %q {\n  capabilities = [%q]\n}\n\n", why, mount+"/"+path, capability)
	}
	switch role {
	case RolePlugin:
		fmt.Fprintf(&b, "# kms-plugin: the KMS plugin's policy for transit key %q at mount %q.\n"+
			"# No \"create\": encrypting must never recreate a deleted key.\n\n", key, mount)
	case RoleOperator:
		fmt.Fprintf(&b, "# kms-plugin: the operator's policy (kmsctl vault) for transit key %q at mount %q.\n\n", key, mount)
	default:
		return "", fmt.Errorf("policy role %q (want %s or %s): %w", role, RolePlugin, RoleOperator, providers.ErrInvalidArgument)
	}
	rule("encrypt/"+key, "update", "Wrap DEK seeds.")
	rule("decrypt/"+key, "update", "Unwrap DEK seeds.")
	rule("keys/"+key, "read", "Read versions and creation times (key_id) and min_decryption_version.")
	if role == RoleOperator {
		rule("keys/"+key+"/rotate", "update", "kmsctl vault rotate.")
		rule("keys/"+key+"/config", "update", "kmsctl vault retire (min_decryption_version).")
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}
