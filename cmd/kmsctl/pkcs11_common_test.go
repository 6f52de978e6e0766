package main

import (
	"os"
	"path/filepath"
	"testing"
)

func writePIN(t *testing.T, pin string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(f, []byte(pin), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
