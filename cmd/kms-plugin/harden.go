package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// hardenProcess marks the process non-dumpable: no core dump can carry the
// keys and DEK seeds in its memory to disk, and other processes of the same
// user cannot ptrace it or read its memory through /proc.
func hardenProcess() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("mark the process non-dumpable: %w", err)
	}
	return nil
}
