package main

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestHardenProcessClearsDumpable(t *testing.T) {
	if err := hardenProcess(); err != nil {
		t.Fatalf("hardenProcess() = %v", err)
	}
	got, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got != 0 {
		t.Errorf("PR_GET_DUMPABLE after hardenProcess = %d, want 0", got)
	}
}
