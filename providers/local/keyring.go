package local

import (
	"bytes"
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

// Keyring file format, version 1: JSON, so that an operator can read it
// (key bytes aside) and diff it.
//
//	{
//	  "kind": "kms-plugin-keyring",
//	  "format": 1,
//	  "id": "<16 random hex digits, new for every keyring>",
//	  "versions": [{"version": 1, "state": "primary", "created": "...", "key": "<base64 of 32 bytes>"}],
//	  "checksum": "sha256:<hex of the document with checksum empty>"
//	}
//
// The checksum catches corruption that still parses (a flipped bit in a key
// or a state). It is not a MAC: whoever can write the file holds the keys.
const (
	fileKind   = "kms-plugin-keyring"
	fileFormat = 1
	keySize    = 32
	idBytes    = 8
	// maxVersions bounds the keyring; rotating weekly for 20 years stays far below.
	maxVersions = 4096
	// maxFileSize bounds what Load reads.
	maxFileSize = 4 << 20
)

var idPattern = regexp.MustCompile(`^[0-9a-f]{16}$`)

// Keyring is a set of versioned 256-bit key-encryption keys.
type Keyring struct {
	Kind     string    `json:"kind"`
	Format   int       `json:"format"`
	ID       string    `json:"id"`
	Versions []Version `json:"versions"`
	Checksum string    `json:"checksum"`
}

// Version is one key version.
type Version struct {
	Version int64              `json:"version"`
	State   providers.KeyState `json:"state"`
	Created time.Time          `json:"created"`
	Key     []byte             `json:"key"`
}

// New returns a keyring with a fresh random id and one primary version.
func New(now time.Time) (*Keyring, error) {
	id := make([]byte, idBytes)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("generate keyring id: %w", err)
	}
	k := &Keyring{Kind: fileKind, Format: fileFormat, ID: hex.EncodeToString(id)}
	if _, err := k.Add(now); err != nil {
		return nil, err
	}
	k.Versions[0].State = providers.StatePrimary
	return k, nil
}

// KeyID returns the public key_id of version v: the keyring's random id and
// the version number. It holds no key material, is stable for the life of
// the version, and is never reused because every keyring has a new id.
func (k *Keyring) KeyID(v int64) string {
	return "local:" + k.ID + ":v" + strconv.FormatInt(v, 10)
}

// parseKeyID splits a key_id made by KeyID.
func parseKeyID(s string) (ring string, v int64, ok bool) {
	rest, ok := strings.CutPrefix(s, "local:")
	if !ok {
		return "", 0, false
	}
	ring, vs, ok := strings.Cut(rest, ":v")
	if !ok {
		return "", 0, false
	}
	v, err := strconv.ParseInt(vs, 10, 64)
	if err != nil || v < 1 {
		return "", 0, false
	}
	return ring, v, true
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

// Add appends a new active version with a fresh random key and returns it.
// It does not make the version primary: see Promote.
func (k *Keyring) Add(now time.Time) (*Version, error) {
	if len(k.Versions) >= maxVersions {
		return nil, fmt.Errorf("keyring holds %d versions, the maximum; retire and prune old ones first", len(k.Versions))
	}
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	var next int64 = 1
	for _, v := range k.Versions {
		next = max(next, v.Version+1)
	}
	k.Versions = append(k.Versions, Version{Version: next, State: providers.StateActive, Created: now.UTC().Truncate(time.Second), Key: key})
	return &k.Versions[len(k.Versions)-1], nil
}

// Promote makes version v primary; the previous primary becomes active.
func (k *Keyring) Promote(v int64) error {
	t := k.Find(v)
	switch {
	case t == nil:
		return fmt.Errorf("promote version %d: %w", v, providers.ErrKeyNotFound)
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
	case t.State == providers.StateRetired:
		t.State = providers.StateActive
	}
	return nil
}

// Prune deletes a retired version, key bytes and all, so that no copy of
// the keyring made from now on can decrypt what it protected. It refuses a
// version that is not retired: retire first, and prune only once nothing
// needs it (kmsctl verify) and backups made before are handled.
func (k *Keyring) Prune(v int64) error {
	t := k.Find(v)
	switch {
	case t == nil:
		return fmt.Errorf("prune version %d: %w", v, providers.ErrKeyNotFound)
	case t.State != providers.StateRetired:
		return fmt.Errorf("prune version %d: it is %s; retire it first: %w", v, t.State, providers.ErrInvalidArgument)
	}
	clear(t.Key)
	k.Versions = slices.DeleteFunc(k.Versions, func(x Version) bool { return x.Version == v })
	return nil
}

// Infos lists the versions without key bytes.
func (k *Keyring) Infos() []providers.KeyInfo {
	out := make([]providers.KeyInfo, 0, len(k.Versions))
	for _, v := range k.Versions {
		out = append(out, providers.KeyInfo{Version: v.Version, KeyID: k.KeyID(v.Version), State: v.State, Created: v.Created})
	}
	return out
}

// Validate checks the keyring's structure: kind, format, id, unique
// positive version numbers, 32-byte keys, known states, exactly one primary.
func (k *Keyring) Validate() error {
	if k.Kind != fileKind {
		return fmt.Errorf("kind is %s, want %q", shown(k.Kind), fileKind)
	}
	if k.Format != fileFormat {
		return fmt.Errorf("unsupported format %d (this kms-plugin reads format %d)", k.Format, fileFormat)
	}
	if !idPattern.MatchString(k.ID) {
		return errors.New("id must be 16 lowercase hex digits")
	}
	if len(k.Versions) == 0 || len(k.Versions) > maxVersions {
		return fmt.Errorf("keyring has %d versions; want 1 to %d", len(k.Versions), maxVersions)
	}
	seen := make(map[int64]bool, len(k.Versions))
	primaries := 0
	for _, v := range k.Versions {
		switch {
		case v.Version < 1 || v.Version > maxVersionNumber:
			return fmt.Errorf("version number %d out of range", v.Version)
		case seen[v.Version]:
			return fmt.Errorf("version %d appears twice", v.Version)
		case len(v.Key) != keySize:
			return fmt.Errorf("version %d: key is %d bytes, want %d", v.Version, len(v.Key), keySize)
		}
		seen[v.Version] = true
		switch v.State {
		case providers.StatePrimary:
			primaries++
		case providers.StateActive, providers.StateRetired:
		default:
			return fmt.Errorf("version %d: unknown state %s", v.Version, shown(string(v.State)))
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
	if err := k.Validate(); err != nil {
		return nil, fmt.Errorf("invalid keyring: %w", err)
	}
	want, err := k.checksum()
	if err != nil {
		return nil, err
	}
	if k.Checksum != want {
		return nil, errors.New("keyring checksum mismatch: the file is corrupt or was edited by hand")
	}
	return &k, nil
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
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("field %q has the wrong type", te.Field)
	}
	var ce base64.CorruptInputError
	if errors.As(err, &ce) {
		return errors.New("a key is not valid base64")
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
