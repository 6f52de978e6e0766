//go:build tools

// Package tools pins the kube-apiserver and kube-controller-manager that the
// end-to-end tests build.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
