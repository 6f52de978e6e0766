package pkcs11

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
)

// Name is the value of --provider that selects PKCS#11.
const Name = "pkcs11"

// Config selects a PKCS#11 module, a token, its PIN and a key label.
type Config struct {
	// Module is the path of the PKCS#11 module (shared library).
	Module string
	// TokenLabel selects the token by label; Slot by slot ID. Exactly
	// one of them is set (Slot < 0: unset).
	TokenLabel string
	Slot       int
	// PINFile holds the user PIN (mode 0600 or stricter, owned by the
	// plugin's user). The PIN itself is never a flag.
	PINFile string
	// KeyLabel is the label of the key; version N is the object "<KeyLabel>-vN".
	KeyLabel string
	// RefreshInterval is how often the token's objects are re-read, so
	// that a rotation done elsewhere becomes current without a restart.
	RefreshInterval time.Duration
	// Sessions is how many sessions are opened for concurrent calls.
	Sessions int

	// allowNoKey lets kmsctl open a token that holds no version yet, to
	// generate the first.
	allowNoKey bool
	// operator lets root read a PIN file owned by the plugin's user.
	operator bool
}

// DefaultConfig returns the defaults of the --pkcs11-* flags.
func DefaultConfig() Config {
	return Config{Slot: -1, KeyLabel: "kms-plugin", RefreshInterval: 30 * time.Second, Sessions: 4}
}

// ForOperator returns c as kmsctl uses it: a token without any key version
// may be opened (to generate the first), and root may read a PIN file
// owned by the plugin's user.
func (c Config) ForOperator() Config {
	c.allowNoKey, c.operator = true, true
	return c
}

// RegisterFlags adds the --pkcs11-* flags to fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Module, "pkcs11-module", c.Module, "pkcs11 provider: path of the PKCS#11 module (for example /usr/lib/softhsm/libsofthsm2.so)")
	fs.StringVar(&c.TokenLabel, "pkcs11-token-label", c.TokenLabel, "pkcs11 provider: label of the token that holds the key (or --pkcs11-slot)")
	fs.IntVar(&c.Slot, "pkcs11-slot", c.Slot, "pkcs11 provider: slot ID of the token (instead of --pkcs11-token-label; -1: unset)")
	fs.StringVar(&c.PINFile, "pkcs11-pin-file", c.PINFile, "pkcs11 provider: file holding the token's user PIN (mode 0600, owned by the plugin's user)")
	fs.StringVar(&c.KeyLabel, "pkcs11-key-label", c.KeyLabel, "pkcs11 provider: label of the key; version N is the token object <label>-v<N>")
	fs.DurationVar(&c.RefreshInterval, "pkcs11-refresh-interval", c.RefreshInterval, "pkcs11 provider: how often the token's key versions are re-read (rotations)")
	fs.IntVar(&c.Sessions, "pkcs11-sessions", c.Sessions, "pkcs11 provider: sessions opened for concurrent calls (one operation per session at a time)")
}

// maxKeyLabel bounds --pkcs11-key-label: the object label is "<label>-vN"
// and the key_id carries it.
const maxKeyLabel = 64

// Validate checks the configuration without touching the module or the PIN.
func (c Config) Validate() error {
	var errs []error
	if c.Module == "" {
		errs = append(errs, errors.New("--pkcs11-module is required"))
	}
	switch {
	case c.TokenLabel == "" && c.Slot < 0:
		errs = append(errs, errors.New("one of --pkcs11-token-label and --pkcs11-slot is required"))
	case c.TokenLabel != "" && c.Slot >= 0:
		errs = append(errs, errors.New("--pkcs11-token-label and --pkcs11-slot select the token two ways: give only one"))
	}
	if len(c.TokenLabel) > 32 {
		errs = append(errs, fmt.Errorf("--pkcs11-token-label is %d bytes; a token label has at most 32", len(c.TokenLabel)))
	}
	if c.PINFile == "" {
		errs = append(errs, errors.New("--pkcs11-pin-file is required (the PIN is never a flag)"))
	}
	if err := validKeyLabel(c.KeyLabel); err != nil {
		errs = append(errs, err)
	}
	if c.RefreshInterval <= 0 {
		errs = append(errs, errors.New("--pkcs11-refresh-interval must be positive"))
	}
	if c.Sessions < 1 || c.Sessions > 256 {
		errs = append(errs, fmt.Errorf("--pkcs11-sessions is %d; want 1..256", c.Sessions))
	}
	if len(errs) > 0 {
		return fmt.Errorf("pkcs11 provider: %w: %w", providers.ErrNotConfigured, errors.Join(errs...))
	}
	return nil
}

// validKeyLabel accepts 1..64 characters of [A-Za-z0-9._-]: the label goes
// into object labels and key_ids, where ':' and '/' separate fields.
func validKeyLabel(s string) error {
	if s == "" || len(s) > maxKeyLabel {
		return fmt.Errorf("--pkcs11-key-label must have 1..%d characters", maxKeyLabel)
	}
	for i := 0; i < len(s); i++ {
		if !labelChar(s[i]) {
			return fmt.Errorf("--pkcs11-key-label %q: only letters, digits, '.', '_' and '-' are allowed", s)
		}
	}
	return nil
}

func labelChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// maxPINFile bounds what is read from the PIN file.
const maxPINFile = 4096

// readPIN reads the PIN file: a regular file, not accessible to group or
// others, owned by this user (unless anyOwner). Errors name the file,
// never its content. Surrounding whitespace (a trailing newline) is
// dropped.
func readPIN(path string, anyOwner bool) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("pkcs11 PIN file: %w: %w", providers.ErrNotConfigured, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("pkcs11 PIN file %s is not a regular file (mode %s): %w", path, fi.Mode().Type(), providers.ErrNotConfigured)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("pkcs11 PIN file: %w: %w", providers.ErrNotConfigured, err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return "", fmt.Errorf("pkcs11 PIN file: %w: %w", providers.ErrNotConfigured, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("pkcs11 PIN file %s has mode %#o: it must not be accessible to group or others (chmod 600 %s): %w", path, perm, path, providers.ErrNotConfigured)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && !anyOwner {
		if uid := os.Geteuid(); int(st.Uid) != uid {
			return "", fmt.Errorf("pkcs11 PIN file %s is owned by uid %d, but this process runs as uid %d: chown it to the plugin's user: %w", path, st.Uid, uid, providers.ErrNotConfigured)
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPINFile+1))
	if err != nil {
		return "", fmt.Errorf("read pkcs11 PIN file %s: %w: %w", path, providers.ErrNotConfigured, err)
	}
	defer clear(b)
	if len(b) > maxPINFile {
		return "", fmt.Errorf("pkcs11 PIN file %s is larger than %d bytes: %w", path, maxPINFile, providers.ErrNotConfigured)
	}
	pin := string(bytes.TrimSpace(b))
	if pin == "" {
		return "", fmt.Errorf("pkcs11 PIN file %s is empty: %w", path, providers.ErrNotConfigured)
	}
	return pin, nil
}
