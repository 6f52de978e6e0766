package providers

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestClassifyIsTheOneTable(t *testing.T) {
	for _, tc := range []struct {
		err        error
		code       codes.Code
		outcome    string
		revocation bool
	}{
		{nil, codes.OK, "ok", false},
		{fmt.Errorf("decrypt: %w", ErrInvalidCiphertext), codes.InvalidArgument, "invalid_ciphertext", false},
		{ErrInvalidArgument, codes.InvalidArgument, "invalid_argument", false},
		{fmt.Errorf("read key: %w", ErrKeyNotFound), codes.NotFound, "key_not_found", true},
		{ErrKeyRetired, codes.FailedPrecondition, "key_retired", true},
		{ErrNotConfigured, codes.FailedPrecondition, "not_configured", false},
		{ErrPermissionDenied, codes.PermissionDenied, "permission_denied", true},
		{fmt.Errorf("vault: %w: sealed", ErrUnavailable), codes.Unavailable, "unavailable", false},
		{fmt.Errorf("call: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "deadline_exceeded", false},
		{context.Canceled, codes.Canceled, "canceled", false},
		{errors.New("something else"), codes.Internal, "error", false},
		// Two sentinels: the first listed decides code and label; any
		// revocation among them makes it a revocation.
		{fmt.Errorf("%w: %w", ErrUnavailable, ErrInvalidCiphertext), codes.InvalidArgument, "invalid_ciphertext", false},
		{fmt.Errorf("%w: %w", ErrInvalidArgument, ErrPermissionDenied), codes.InvalidArgument, "invalid_argument", true},
	} {
		c := Classify(tc.err)
		if c.Code != tc.code || c.Outcome != tc.outcome || Outcome(tc.err) != tc.outcome || IsRevocation(tc.err) != tc.revocation {
			t.Errorf("Classify(%v) = %v %q, revocation %v; want %v %q, %v", tc.err, c.Code, c.Outcome, IsRevocation(tc.err), tc.code, tc.outcome, tc.revocation)
		}
	}
}

func TestEverySentinelIsInTheTable(t *testing.T) {
	for _, s := range []error{ErrInvalidCiphertext, ErrInvalidArgument, ErrKeyNotFound, ErrKeyRetired, ErrPermissionDenied, ErrUnavailable, ErrNotConfigured} {
		if c := Classify(s); c.Sentinel == nil || !errors.Is(c.Sentinel, s) || !errors.Is(s, c.Sentinel) {
			t.Errorf("%v has no row of its own in the table (classified as %+v)", s, c)
		}
	}
}
