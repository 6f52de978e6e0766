//go:build tools

// Package tools pins the Vault server that the Vault tests build.
package tools

import _ "github.com/hashicorp/vault"
