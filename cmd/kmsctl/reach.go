package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms"
)

// Exit codes besides 0 (success) and 1 (any other failure), so that a
// script can tell "the plugin is not there" from "the plugin answered
// wrong".
const exitUnreachable = 2

// exitError carries an exit code for main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitCode is the process exit code for err.
func exitCode(err error) int {
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	return 1
}

// reachPlugin calls Status once, within timeout, and turns a failure to
// connect into one line that says what is at the endpoint: nothing, not a
// socket, or a socket nobody answers on. Any answer, even an error status,
// means the plugin is there.
func reachPlugin(ctx context.Context, client kmsapi.KeyManagementServiceClient, endpoint string, timeout time.Duration) error {
	_, err := callStatus(ctx, client, endpoint, timeout)
	var unreachable *exitError
	if errors.As(err, &unreachable) {
		return err
	}
	return nil
}

// callStatus is reachPlugin that also returns the plugin's answer (or the
// error status it answered with).
func callStatus(ctx context.Context, client kmsapi.KeyManagementServiceClient, endpoint string, timeout time.Duration) (*kmsapi.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := client.Status(ctx, &kmsapi.StatusRequest{})
	if c := status.Code(err); err != nil && (c == codes.Unavailable || c == codes.DeadlineExceeded) {
		return nil, &exitError{code: exitUnreachable, err: fmt.Errorf("cannot reach plugin at %s: %s", endpoint, whyUnreachable(endpoint, timeout))}
	}
	return resp, err
}

// whyUnreachable looks at what is at a unix endpoint.
func whyUnreachable(endpoint string, timeout time.Duration) string {
	ep, err := kms.ParseEndpoint(endpoint)
	if err != nil || ep.Abstract() {
		return fmt.Sprintf("no answer within %s", timeout)
	}
	fi, err := os.Stat(ep.Address)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return ep.Address + " does not exist (is the plugin running, and is this its --listen path?)"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied on " + ep.Address + " (the socket is 0600: run as the plugin's user or root)"
	case err != nil:
		return err.Error()
	case fi.Mode().Type() != fs.ModeSocket:
		return ep.Address + " is not a socket"
	}
	return fmt.Sprintf("no plugin answers on %s within %s (a stale socket, or a plugin still starting)", ep.Address, timeout)
}
