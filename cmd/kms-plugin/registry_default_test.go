//go:build !pkcs11

package main

const pkcs11Built = false
