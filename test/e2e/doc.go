// Package e2e proves kms-plugin where it lives: kube-apiserver storing
// Secrets in etcd through the plugin. The tests carry the build tag e2e so
// that `go test ./...` stays fast; run them with
//
//	go test -tags e2e -count=1 -timeout 40m ./test/e2e/...
//
// By default each test starts its own control plane from real binaries on
// loopback (see package cluster). Setting KMS_E2E_KUBECONFIG runs the same
// checks against an existing cluster such as kind; docs/kind.md lists the
// variables.
package e2e
