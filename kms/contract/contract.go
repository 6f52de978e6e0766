// Package contract declares, once, the fixed values and limits of the KMS
// v2 contract between kube-apiserver and a plugin (kms/CONTRACT.md says
// where each comes from). The plugin's service, the conformance checks,
// the provider test suite, the benchmark, kmsctl and the Vault provider
// all import them from here, so that no two of them can disagree.
package contract

const (
	// APIVersion is the version a plugin's Status must report.
	APIVersion = "v2"
	// HealthzOK is the healthz of a healthy plugin; anything else is
	// unhealthy.
	HealthzOK = "ok"
	// MaxKeyIDLen is the longest key_id kube-apiserver accepts.
	MaxKeyIDLen = 1024
	// MaxCiphertextLen is the longest Encrypt ciphertext it accepts.
	MaxCiphertextLen = 1024
	// MaxAnnotationsLen bounds an EncryptResponse's annotations, keys and
	// values together.
	MaxAnnotationsLen = 32 * 1024
	// DefaultEndpoint is where kms-plugin listens, and where kmsctl looks
	// for it, unless told otherwise.
	DefaultEndpoint = "unix:///var/run/kms-plugin/kms.sock"
)
