package verify

import (
	"bytes"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
)

// Type is how a stored value is protected.
type Type string

// The types a value can have. The string values are what kmsctl verify
// prints, and what --expect-provider accepts besides a kms provider name.
const (
	Identity  Type = "identity"  // plaintext: protobuf, JSON or CBOR
	AESCBC    Type = "aescbc"    // k8s:enc:aescbc:v1:<key name>:
	AESGCM    Type = "aesgcm"    // k8s:enc:aesgcm:v1:<key name>:
	Secretbox Type = "secretbox" // k8s:enc:secretbox:v1:<key name>:
	KMSv1     Type = "kms-v1"    // k8s:enc:kms:v1:<provider name>:
	KMSv2     Type = "kms-v2"    // k8s:enc:kms:v2:<provider name>: + EncryptedObject
	Unknown   Type = "unknown"   // none of the above
)

// Class is what Classify found out about one value.
type Class struct {
	Type Type `json:"type"`
	// Provider is the kms provider's name (KMS v1 and v2).
	Provider string `json:"provider,omitempty"`
	// Key is the key name for aescbc, aesgcm and secretbox.
	Key string `json:"key,omitempty"`
	// KeyID is the key_id stored with a KMS v2 value.
	KeyID string `json:"key_id,omitempty"`
	// Encoding is the plaintext encoding: protobuf, json or cbor.
	Encoding string `json:"encoding,omitempty"`
	// Problem says why a value with a known prefix could not be parsed,
	// such as a KMS v2 value whose EncryptedObject is damaged.
	Problem string `json:"problem,omitempty"`
}

// The prefixes kube-apiserver writes; see
// k8s.io/apiserver/pkg/server/options/encryptionconfig.
const encPrefix = "k8s:enc:"

var (
	protobufPrefix = []byte("k8s\x00")
	cborPrefix     = []byte{0xd9, 0xd9, 0xf7} // CBOR self-described tag
)

// Classify says how a raw etcd value is protected. It never fails: a value
// it does not recognise is Unknown, and a damaged KMS v2 value keeps its
// provider name and says what is wrong in Problem.
func Classify(raw []byte) Class {
	if bytes.HasPrefix(raw, []byte(encPrefix)) {
		return classifyEncrypted(raw[len(encPrefix):])
	}
	switch {
	case bytes.HasPrefix(raw, protobufPrefix):
		return Class{Type: Identity, Encoding: "protobuf"}
	case bytes.HasPrefix(raw, cborPrefix):
		return Class{Type: Identity, Encoding: "cbor"}
	case len(bytes.TrimLeft(raw, " \t\r\n")) > 0 && bytes.TrimLeft(raw, " \t\r\n")[0] == '{':
		return Class{Type: Identity, Encoding: "json"}
	}
	return Class{Type: Unknown, Problem: fmt.Sprintf("value starts with %q", head(raw))}
}

// classifyEncrypted handles what follows "k8s:enc:": "<type>:v<n>:<name>:".
func classifyEncrypted(rest []byte) Class {
	// Three colon-terminated fields; names never contain ':' (the
	// apiserver's validation refuses them).
	var fields [3]string
	all := rest
	for i := range fields {
		j := bytes.IndexByte(rest, ':')
		if j < 0 {
			return Class{Type: Unknown, Problem: fmt.Sprintf("truncated encryption prefix %q", head(all))}
		}
		fields[i], rest = string(rest[:j]), rest[j+1:]
	}
	typ, version, name := fields[0], fields[1], fields[2]
	switch {
	case typ == "aescbc" && version == "v1":
		return Class{Type: AESCBC, Key: name}
	case typ == "aesgcm" && version == "v1":
		return Class{Type: AESGCM, Key: name}
	case typ == "secretbox" && version == "v1":
		return Class{Type: Secretbox, Key: name}
	case typ == "kms" && version == "v1":
		return Class{Type: KMSv1, Provider: name}
	case typ == "kms" && version == "v2":
		c := Class{Type: KMSv2, Provider: name}
		var obj kmstypes.EncryptedObject
		switch err := proto.Unmarshal(rest, &obj); {
		case err != nil:
			c.Problem = "EncryptedObject does not parse: " + err.Error()
		case obj.KeyID == "":
			c.Problem = "EncryptedObject has no keyID"
		default:
			c.KeyID = obj.KeyID
		}
		return c
	}
	// Quote only the head: the fields run to the first colons, so a damaged
	// value could make them as long as the value itself.
	return Class{Type: Unknown, Problem: fmt.Sprintf("unknown encryption prefix %q", head([]byte(strings.Join(fields[:], ":")+":")))}
}

func head(b []byte) []byte {
	if len(b) > 24 {
		return b[:24]
	}
	return b
}

// Label is a short human form: "kms-v2 kms-plugin local:…:v2",
// "aescbc key1", "identity (protobuf)".
func (c Class) Label() string {
	switch c.Type {
	case Identity:
		return "identity (" + c.Encoding + ")"
	case AESCBC, AESGCM, Secretbox:
		return string(c.Type) + " " + c.Key
	case KMSv1:
		return string(c.Type) + " " + c.Provider
	case KMSv2:
		if c.KeyID == "" {
			return string(c.Type) + " " + c.Provider + " (damaged)"
		}
		return string(c.Type) + " " + c.Provider + " " + c.KeyID
	}
	return string(c.Type)
}
