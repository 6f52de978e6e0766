// Package kms is kms-plugin's server: the Kubernetes KMS v2 gRPC service
// over one provider, and the project's own admin API beside it.
//
// A call's path: the unix socket (socket.go: mode 0600 from the moment it
// exists, a lock against a second instance, only a stale socket ever
// removed) hands the connection to one gRPC server (serve.go: request size
// and stream limits). Its interceptor (metrics.go, logging.go) records the
// call, logs it without plaintext or key bytes, maps every error to a gRPC
// code (errors.go) and turns a panic into Internal. Server (server.go)
// checks the contract's limits (CONTRACT.md), frames the provider's
// ciphertext in the project's envelope (envelope.go: a format byte and the
// provider's key reference, bound as associated data) and calls the
// providers.Provider.
//
// Status never calls the backend: it answers from Health (health.go), a
// background probe whose last result is cached, and which also serves
// /livez, /readyz, /healthz and /metrics (http.go).
//
// Admin (admin.go) serves proto/kmsplugin/admin/v1 on the same socket:
// the key versions the plugin has loaded, with their check values and
// never their bytes, and how its last reload went. kmsctl status shows it;
// kmsctl rotate relies on it before it promotes a new key.
package kms
