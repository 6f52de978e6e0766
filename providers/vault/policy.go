package vault

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

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

// pluginNeeds are the paths and capabilities of Policy(RolePlugin, ...):
// what the plugin's token must be granted, and all it should be.
func pluginNeeds(mount, key string) map[string]string {
	mount = strings.Trim(mount, "/")
	return map[string]string{
		mount + "/encrypt/" + key: "update",
		mount + "/decrypt/" + key: "update",
		mount + "/keys/" + key:    "read",
	}
}

// Access is what the token in use may do, against what the plugin needs.
type Access struct {
	// TTL is the token's remaining lifetime; Expires is false for a token
	// that never expires.
	TTL     time.Duration
	Expires bool
	// Missing lists "path: capability" that the plugin needs and the
	// token lacks; Extra lists capabilities beyond the plugin's needs on
	// those paths (a root token has "root" everywhere).
	Missing, Extra []string
}

// CheckAccess asks Vault (sys/capabilities-self) what the token in use may
// do on the paths the plugin uses, and compares it with the plugin policy.
func (p *Provider) CheckAccess(ctx context.Context) (Access, error) {
	var a Access
	if ttl, ok := p.sess.ttlRemaining(); ok {
		a.TTL, a.Expires = ttl, true
	}
	needs := pluginNeeds(p.cfg.Mount, p.cfg.Key)
	paths := make([]string, 0, len(needs))
	for path := range needs {
		paths = append(paths, path)
	}
	sort.Strings(paths)
	for _, path := range paths {
		var caps []string
		err := p.call(ctx, opLookup, func(ctx context.Context) error {
			var err error
			caps, err = p.be.CapabilitiesSelf(ctx, path)
			return err
		})
		if err != nil {
			return Access{}, fmt.Errorf("read the token's capabilities on %s: %w", path, err)
		}
		want, has := needs[path], false
		for _, c := range caps {
			switch {
			case c == want:
				has = true
			case c == "deny":
			default:
				a.Extra = append(a.Extra, path+": "+c)
			}
		}
		if !has && !slices.Contains(caps, "root") {
			a.Missing = append(a.Missing, path+": "+want)
		}
	}
	return a, nil
}
