//go:build tools

// Package tools pins the kube-apiserver that the end-to-end tests build.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
