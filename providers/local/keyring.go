package local

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kms-plugin/kms-plugin/providers"
)

// Keyring file format, version 2: JSON, so that an operator can read it
// (key bytes aside) and diff it.
//
//	{
//	  "kind": "kms-plugin-keyring",
//	  "format": 2,
//	  "id": "<16 random hex digits, new for every keyring>",
//	  "next_version": 4,
//	  "legacy_key_ids_below": 2,
//	  "versions": [
//	    {"version": 1, "state": "active", "created": "...", "check": "<16 hex>", "key": "<base64 of 32 bytes>"},
//	    {"version": 2, "state": "pruned", "created": "...", "check": "<16 hex>"},
//	    {"version": 3, "state": "primary", "created": "...", "check": "<16 hex>", "key": "..."}
//	  ],
//	  "checksum": "sha256:<hex of the document with checksum empty>"
//	}
//
// A key_id names the key bytes, not only the slot: it carries the
// version's check value, "local:<id>:v<N>:<check>", so that two different
// keys never share a key_id, whatever happens to the file: an independent
// "add" on two nodes, a prune then a rotate, a restored backup then a
// rotate. next_version only grows and a pruned version leaves a tombstone
// (no key bytes), so a version number is never given to a second key
// either.
//
// Format 1 had neither; it is read and upgraded on the next write. Its
// versions keep their key_ids ("local:<id>:v<N>", without the check):
// legacy_key_ids_below records which versions those are, so that stored
// ciphertexts keep decrypting.
//
// The checksum catches corruption that still parses (a flipped bit in a key
// or a state); each version's check also catches a changed key. Neither is
// a MAC: whoever can write the file holds the keys.
const (
	fileKind       = "kms-plugin-keyring"
	fileFormat     = 2
	fileFormatV1   = 1
	keySize        = 32
	idBytes        = 8
	checkHexDigits = 16
	// maxVersions bounds the keyring, tombstones included; rotating weekly
	// for 20 years stays far below.
	maxVersions = 4096
	// maxFileSize bounds what Load reads.
	maxFileSize = 4 << 20
)

var (
	idPattern = regexp.MustCompile(`^[0-9a-f]{16}$`)
)

// Keyring is a set of versioned 256-bit key-encryption keys.
type Keyring struct {
	Kind   string `json:"kind"`
	Format int    `json:"format"`
	ID     string `json:"id"`
	// NextVersion is the number the next new version gets. It only grows.
	NextVersion int64 `json:"next_version,omitempty"`
	// LegacyBelow: versions below it were made in format 1 and keep
	// key_ids without a check value.
	LegacyBelow int64     `json:"legacy_key_ids_below,omitempty"`
	Versions    []Version `json:"versions"`
	Checksum    string    `json:"checksum"`
}

// Version is one key version. A pruned version has no Key.
type Version struct {
	Version int64              `json:"version"`
	State   providers.KeyState `json:"state"`
	Created time.Time          `json:"created"`
	Check   string             `json:"check,omitempty"`
	Key     []byte             `json:"key,omitempty"`
}

// NewKeyring returns a keyring with a fresh random id and one primary version.
func NewKeyring(now time.Time) (*Keyring, error) {
	id := make([]byte, idBytes)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("generate keyring id: %w", err)
	}
	k := &Keyring{Kind: fileKind, Format: fileFormat, ID: hex.EncodeToString(id), NextVersion: 1}
	if _, err := k.Add(now); err != nil {
		return nil, err
	}
	k.Versions[0].State = providers.StatePrimary
	return k, nil
}

// checkLabel is the fixed message whose HMAC under a key is its check value.
const checkLabel = "kms-plugin key check value v1"

// CheckValue returns the key check value of key: the first 8 bytes of
// HMAC-SHA256(key, checkLabel), in hex. It is public (it goes into key_ids
// in etcd) and reveals nothing of the key, but two keys share it only by a
// 2^-64 accident, so nodes compare it to prove they hold the same key.
func CheckValue(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(checkLabel))
	return hex.EncodeToString(m.Sum(nil)[:checkHexDigits/2])
}

// KeyID returns the public key_id of version v: "local:<id>:v<N>:<check>",
// or "local:<id>:v<N>" for a version made in format 1. It holds no key
// material, is stable for the life of the version, and names the key
// bytes, so it is never shared by two different keys.
func (k *Keyring) KeyID(v int64) string {
	check := ""
	if t := k.Find(v); t != nil {
		check = t.Check
	}
	return keyIDOf(k.ID, v, check, v < k.LegacyBelow)
}

func keyIDOf(ring string, v int64, check string, legacy bool) string {
	id := "local:" + ring + ":v" + strconv.FormatInt(v, 10)
	if legacy {
		return id
	}
	return id + ":" + check
}

// isCheck reports whether s has a check value's form: 16 lowercase hex
// digits. A loop, not a regexp: parseKeyID runs on every Decrypt.
func isCheck(s string) bool {
	if len(s) != checkHexDigits {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// keyIDParts is a key_id split by parseKeyID.
type keyIDParts struct {
	ring  string
	v     int64
	check string // "" for a format 1 key_id
}

// parseKeyID splits a key_id made by KeyID.
func parseKeyID(s string) (keyIDParts, bool) {
	rest, ok := strings.CutPrefix(s, "local:")
	if !ok {
		return keyIDParts{}, false
	}
	ring, vs, ok := strings.Cut(rest, ":v")
	if !ok {
		return keyIDParts{}, false
	}
	vs, check, hasCheck := strings.Cut(vs, ":")
	if hasCheck && !isCheck(check) {
		return keyIDParts{}, false
	}
	v, err := strconv.ParseInt(vs, 10, 64)
	if err != nil || v < 1 {
		return keyIDParts{}, false
	}
	return keyIDParts{ring: ring, v: v, check: check}, true
}

// keyRef encodes a version number for the ciphertext envelope.
func keyRef(v int64) []byte { return binary.AppendUvarint(nil, uint64(v)) }

// parseKeyRef decodes keyRef's output, refusing trailing bytes.
func parseKeyRef(b []byte) (int64, error) {
	v, n := binary.Uvarint(b)
	if n <= 0 || n != len(b) || v < 1 || v > maxVersionNumber {
		return 0, fmt.Errorf("key reference is not a version number: %w", providers.ErrInvalidCiphertext)
	}
	return int64(v), nil
}

const maxVersionNumber = 1 << 40

// Primary returns the primary version.
func (k *Keyring) Primary() *Version {
	for i := range k.Versions {
		if k.Versions[i].State == providers.StatePrimary {
			return &k.Versions[i]
		}
	}
	return nil
}

// Find returns version v, or nil.
func (k *Keyring) Find(v int64) *Version {
	for i := range k.Versions {
		if k.Versions[i].Version == v {
			return &k.Versions[i]
		}
	}
	return nil
}

// nextVersion is the number the next version gets: NextVersion, but never
// one that is present.
func (k *Keyring) nextVersion() int64 {
	next := max(k.NextVersion, 1)
	for _, v := range k.Versions {
		next = max(next, v.Version+1)
	}
	return next
}

// Add appends a new active version with a fresh random key and returns it.
// It does not make the version primary: see Promote. Its number was never
// used in this keyring, not even by a pruned version.
func (k *Keyring) Add(now time.Time) (*Version, error) {
	if len(k.Versions) >= maxVersions {
		return nil, fmt.Errorf("keyring holds %d versions, the maximum; retire and prune old ones first", len(k.Versions))
	}
	next := k.nextVersion()
	if next > maxVersionNumber {
		return nil, fmt.Errorf("keyring has used every version number up to %d", maxVersionNumber)
	}
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	k.NextVersion = next + 1
	k.Versions = append(k.Versions, Version{Version: next, State: providers.StateActive, Created: now.UTC().Truncate(time.Second), Check: CheckValue(key), Key: key})
	return &k.Versions[len(k.Versions)-1], nil
}

// Import adds v, a version copied from another copy of this keyring (the
// file of another control-plane node), as an active version. It does
// nothing if this copy holds the same key under that version already, and
// refuses if it holds another: the copies have diverged.
func (k *Keyring) Import(v Version) error {
	if len(v.Key) != keySize || CheckValue(v.Key) != v.Check {
		return fmt.Errorf("import version %d: not a valid key version", v.Version)
	}
	if have := k.Find(v.Version); have != nil {
		if have.Check != v.Check {
			return fmt.Errorf("import version %d: this keyring holds another key under that version (check %s, importing %s); the copies have diverged", v.Version, have.Check, v.Check)
		}
		return nil
	}
	if len(k.Versions) >= maxVersions {
		return fmt.Errorf("keyring holds %d versions, the maximum; retire and prune old ones first", len(k.Versions))
	}
	if v.Version < k.LegacyBelow {
		return fmt.Errorf("import version %d: it is below the format 1 versions of this copy; copy the whole file instead", v.Version)
	}
	c := v
	c.Key = slices.Clone(v.Key)
	c.State = providers.StateActive
	k.Versions = append(k.Versions, c)
	k.NextVersion = max(k.NextVersion, v.Version+1)
	return nil
}

// Promote makes version v primary; the previous primary becomes active.
func (k *Keyring) Promote(v int64) error {
	t := k.Find(v)
	switch {
	case t == nil:
		return fmt.Errorf("promote version %d: %w", v, providers.ErrKeyNotFound)
	case t.State == providers.StatePruned:
		return fmt.Errorf("promote version %d: it was pruned; its key is gone: %w", v, providers.ErrKeyNotFound)
	case t.State == providers.StateRetired:
		return fmt.Errorf("promote version %d: it is retired: %w", v, providers.ErrKeyRetired)
	case t.State == providers.StatePrimary:
		return nil
	}
	if p := k.Primary(); p != nil {
		p.State = providers.StateActive
	}
	t.State = providers.StatePrimary
	return nil
}

// Rotate adds a version and makes it primary.
func (k *Keyring) Rotate(now time.Time) (*Version, error) {
	v, err := k.Add(now)
	if err != nil {
		return nil, err
	}
	n := v.Version
	if err := k.Promote(n); err != nil {
		return nil, err
	}
	return k.Find(n), nil
}

// Retire marks version v retired. It refuses the primary version.
func (k *Keyring) Retire(v int64) error {
	t := k.Find(v)
	switch {
	case t == nil:
		return fmt.Errorf("retire version %d: %w", v, providers.ErrKeyNotFound)
	case t.State == providers.StatePrimary:
		return fmt.Errorf("retire version %d: it is the primary version; rotate or promote another first: %w", v, providers.ErrInvalidArgument)
	case t.State == providers.StatePruned:
		return nil // already further along than retired
	}
	t.State = providers.StateRetired
	return nil
}

// Reactivate makes a retired version active again, so that it decrypts:
// the way back from a retirement that came too early.
func (k *Keyring) Reactivate(v int64) error {
	t := k.Find(v)
	switch {
	case t == nil:
		return fmt.Errorf("reactivate version %d: %w", v, providers.ErrKeyNotFound)
	case t.State == providers.StatePruned:
		return fmt.Errorf("reactivate version %d: it was pruned; its key is gone: %w", v, providers.ErrKeyNotFound)
	case t.State == providers.StateRetired:
		t.State = providers.StateActive
	}
	return nil
}

// Prune deletes a retired version's key bytes, so that no copy of the
// keyring made from now on can decrypt what it protected. The version
// stays as a tombstone (number, creation time, check value, no key) so
// that its number and key_id are never used for another key. It refuses a
// version that is not retired: retire first, and prune only once nothing
// needs it (kmsctl verify) and backups made before are handled. Pruning a
// pruned version does nothing.
func (k *Keyring) Prune(v int64) error {
	t := k.Find(v)
	switch {
	case t == nil:
		return fmt.Errorf("prune version %d: %w", v, providers.ErrKeyNotFound)
	case t.State == providers.StatePruned:
		return nil
	case t.State != providers.StateRetired:
		return fmt.Errorf("prune version %d: it is %s; retire it first: %w", v, t.State, providers.ErrInvalidArgument)
	}
	clear(t.Key)
	t.Key = nil
	t.State = providers.StatePruned
	return nil
}

// Infos lists the versions without key bytes.
func (k *Keyring) Infos() []providers.KeyInfo {
	out := make([]providers.KeyInfo, 0, len(k.Versions))
	for _, v := range k.Versions {
		out = append(out, providers.KeyInfo{Version: v.Version, KeyID: k.KeyID(v.Version), State: v.State, Created: v.Created, Check: v.Check})
	}
	return out
}

// Validate checks the keyring's structure: kind, format, id, unique
// positive version numbers below next_version, 32-byte keys whose check
// values match (no key for a pruned version), known states, exactly one
// primary.
func (k *Keyring) Validate() error {
	if k.Kind != fileKind {
		return fmt.Errorf("kind is %s, want %q", shown(k.Kind), fileKind)
	}
	if k.Format != fileFormat {
		return fmt.Errorf("unsupported format %d (this kms-plugin reads formats %d and %d)", k.Format, fileFormatV1, fileFormat)
	}
	if !idPattern.MatchString(k.ID) {
		return errors.New("id must be 16 lowercase hex digits")
	}
	if len(k.Versions) == 0 || len(k.Versions) > maxVersions {
		return fmt.Errorf("keyring has %d versions; want 1 to %d", len(k.Versions), maxVersions)
	}
	if k.NextVersion < 1 || k.NextVersion > maxVersionNumber+1 || k.LegacyBelow < 0 || k.LegacyBelow > k.NextVersion {
		return fmt.Errorf("next_version %d or legacy_key_ids_below %d out of range", k.NextVersion, k.LegacyBelow)
	}
	seen := make(map[int64]bool, len(k.Versions))
	primaries := 0
	for _, v := range k.Versions {
		switch {
		case v.Version < 1 || v.Version > maxVersionNumber:
			return fmt.Errorf("version number %d out of range", v.Version)
		case v.Version >= k.NextVersion:
			return fmt.Errorf("version %d is not below next_version %d", v.Version, k.NextVersion)
		case seen[v.Version]:
			return fmt.Errorf("version %d appears twice", v.Version)
		}
		seen[v.Version] = true
		switch v.State {
		case providers.StatePruned:
			if len(v.Key) != 0 {
				return fmt.Errorf("version %d is pruned but still holds a key", v.Version)
			}
		case providers.StatePrimary:
			primaries++
		case providers.StateActive, providers.StateRetired:
		default:
			return fmt.Errorf("version %d: unknown state %s", v.Version, shown(string(v.State)))
		}
		if v.State != providers.StatePruned && len(v.Key) != keySize {
			return fmt.Errorf("version %d: key is %d bytes, want %d", v.Version, len(v.Key), keySize)
		}
		if !isCheck(v.Check) {
			return fmt.Errorf("version %d: check must be 16 lowercase hex digits", v.Version)
		}
		if v.State != providers.StatePruned && CheckValue(v.Key) != v.Check {
			return fmt.Errorf("version %d: the key does not match its check value; the file is corrupt or was edited by hand", v.Version)
		}
	}
	if primaries != 1 {
		return fmt.Errorf("keyring has %d primary versions, want exactly 1", primaries)
	}
	return nil
}

// Marshal validates the keyring, sorts it by version, sets its checksum and
// encodes it.
func (k *Keyring) Marshal() ([]byte, error) {
	if err := k.Validate(); err != nil {
		return nil, fmt.Errorf("invalid keyring: %w", err)
	}
	slices.SortFunc(k.Versions, func(a, b Version) int { return int(a.Version - b.Version) })
	sum, err := k.checksum()
	if err != nil {
		return nil, err
	}
	k.Checksum = sum
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode keyring: %w", err)
	}
	return append(b, '\n'), nil
}

func (k *Keyring) checksum() (string, error) {
	c := *k
	c.Checksum = ""
	b, err := json.Marshal(&c)
	if err != nil {
		return "", fmt.Errorf("encode keyring: %w", err)
	}
	sum := sha256.Sum256(b)
	clear(b) // the encoding holds every key
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// Parse decodes and validates a keyring file's bytes. Unknown fields,
// trailing data, a bad checksum or an invalid structure are errors whose
// messages never include key bytes.
func Parse(b []byte) (*Keyring, error) {
	if len(b) == 0 {
		return nil, errors.New("keyring file is empty")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var k Keyring
	if err := dec.Decode(&k); err != nil {
		return nil, fmt.Errorf("keyring file is not valid keyring JSON: %w", sanitizeJSONError(err))
	}
	if dec.More() {
		return nil, errors.New("keyring file has trailing data")
	}
	// The checksum covers the document as written, in its own format;
	// structural errors are reported first, as they say more.
	want, err := k.checksum()
	if err != nil {
		return nil, err
	}
	if k.Format == fileFormatV1 {
		if err := k.upgradeV1(); err != nil {
			return nil, fmt.Errorf("invalid keyring: %w", err)
		}
	}
	if err := k.Validate(); err != nil {
		return nil, fmt.Errorf("invalid keyring: %w", err)
	}
	if k.Checksum != want {
		return nil, errors.New("keyring checksum mismatch: the file is corrupt or was edited by hand")
	}
	return &k, nil
}

// upgradeV1 turns a format 1 keyring into format 2 in memory: each version
// gets its check value, and keeps its format 1 key_id. The next write
// stores format 2.
func (k *Keyring) upgradeV1() error {
	if k.NextVersion != 0 || k.LegacyBelow != 0 {
		return errors.New("format 1 has no next_version or legacy_key_ids_below")
	}
	var top int64
	for i, v := range k.Versions {
		if v.Check != "" || v.State == providers.StatePruned {
			return fmt.Errorf("version %d: format 1 has no check values or pruned versions", v.Version)
		}
		if len(v.Key) == keySize {
			k.Versions[i].Check = CheckValue(v.Key)
		}
		top = max(top, v.Version)
	}
	k.Format = fileFormat
	k.NextVersion = top + 1
	k.LegacyBelow = top + 1
	return nil
}

// shown quotes a value read from the file for an error message only if it
// looks like a field name or state (short, lower case): a hand-edited or
// corrupted file may hold key bytes where a name belongs, and error
// messages reach logs and /healthz.
func shown(s string) string {
	if len(s) > 20 {
		return "(a value too long to show)"
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return "(a value not shown)"
		}
	}
	return strconv.Quote(s)
}

// sanitizeJSONError keeps the position of a decoding error but drops any
// quoted input, which could be key bytes.
func sanitizeJSONError(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("syntax error at byte %d", se.Offset)
	}
	// Base64 first: some Go versions report a bad key as a type error
	// that wraps the base64 error.
	var ce base64.CorruptInputError
	if errors.As(err, &ce) {
		return errors.New("a key is not valid base64")
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("field %q has the wrong type", te.Field)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		n, uerr := strconv.Unquote(name)
		if uerr != nil {
			n = name
		}
		return fmt.Errorf("unknown field %s", shown(n))
	}
	return errors.New("malformed or truncated JSON")
}
