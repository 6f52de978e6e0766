// Command slowpipe runs a command and passes its standard output on in
// small chunks with a pause between them, the way a slow or busy program
// writes. A shell pipeline whose reader exits early (`cmd | grep -q`,
// `cmd | head`) then closes the pipe while the command still has output to
// write, and the command dies of SIGPIPE every time instead of now and
// then. Tests put it on PATH in front of a real tool to prove that scripts
// do not depend on that race:
//
//	slowpipe [-chunk 32] [-pause 5ms] -- /path/to/vault secrets list
//
// Standard input and standard error pass through untouched; the exit
// status is the command's. Writing to a closed pipe kills slowpipe with
// SIGPIPE, as it would kill the real tool.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "slowpipe:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("slowpipe", flag.ContinueOnError)
	chunk := fs.Int("chunk", 32, "bytes per write")
	pause := fs.Duration("pause", 5*time.Millisecond, "pause before each write after the first")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 || *chunk < 1 {
		return errors.New("usage: slowpipe [-chunk N] [-pause D] -- command [args...]")
	}
	var out bytes.Buffer
	cmd := exec.Command(fs.Arg(0), fs.Args()[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, &out, os.Stderr
	runErr := cmd.Run()
	var exit *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exit) {
		return runErr
	}
	for b := out.Bytes(); len(b) > 0; {
		n := min(*chunk, len(b))
		// A write to a closed stdout raises SIGPIPE in a Go program, so a
		// reader that went away ends this process here.
		if _, err := os.Stdout.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
		if len(b) > 0 {
			time.Sleep(*pause)
		}
	}
	return runErr
}
