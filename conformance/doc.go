// Package conformance checks a running KMS v2 plugin, kms-plugin or any
// other, against what kube-apiserver enforces and expects of it: the size
// limits it checks on every reply, FQDN annotation keys, Encrypt's key_id
// equal to Status', distinct ciphertexts, round trips, rejection of
// tampered, truncated, empty, oversized and wrong-key_id input with a
// meaningful gRPC code, a stable key_id, concurrent use, and health after
// all that abuse. `kmsctl conformance` is its command line; docs/conformance.md
// explains every check and why the apiserver needs it.
//
// It lives at the repository root, not under kms/, on purpose: it judges a
// plugin only through the public KMS v2 gRPC API (k8s.io/kms/apis/v2), so it
// must not import, or be able to lean on, the implementation it judges.
// Keeping it outside kms/ makes that boundary visible and lets it check
// third-party plugins exactly as it checks ours.
package conformance
