// Package bench is kms-plugin's benchmark suite: it starts what it
// measures (kms-plugin and a no-op KMS v2 server as separate processes, a
// real Vault, etcd and kube-apiserver) and prints one table of ratios, each
// measured side by side in the same run, mostly as the median of several
// alternating rounds. It reports; it asserts only deterministic counts
// (Vault requests per Status and per Encrypt). The tests carry the build
// tag bench so that `go test ./...` skips them; run them with
//
//	go test -tags bench -count=1 -timeout 30m -v -run TestBench ./test/bench
//
// Flags (after the package): -kms.rounds N, -kms.duration D, -kms.only
// local,vault,apiserver and -kms.out FILE; -short shortens every section.
// docs/performance.md holds the results and what they mean.
package bench
