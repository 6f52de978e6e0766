// Package cluster runs the control plane that kms-plugin's end-to-end tests
// check: etcd, kube-apiserver and kms-plugin as real processes on loopback
// (and kube-controller-manager when a test names controllers), or an
// existing cluster described by KMS_E2E_* environment variables.
//
// A local cluster lives in a temporary directory with its own CA, serving
// and client certificates and service-account key, generated in Go. Every
// process runs in its own process group with a parent-death signal and is
// killed from t.Cleanup, so no process outlives the test, even on failure.
package cluster
