package kms

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kms-plugin/kms-plugin/providers"
)

// codeOf classifies an error from a provider or from the service's own
// checks. It is the one place where errors become gRPC codes: a caller never
// sees codes.Unknown.
func codeOf(err error) codes.Code {
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return s.Code()
	}
	return providers.Classify(err).Code
}

// toStatus turns err into a gRPC status error whose message says which
// operation failed. Provider errors never carry secrets, by contract.
func toStatus(op string, err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return err
	}
	return status.Error(codeOf(err), fmt.Sprintf("%s: %v", op, err))
}

// invalidArgument is the error for a request that breaks the KMS contract.
func invalidArgument(op, format string, args ...any) error {
	return status.Error(codes.InvalidArgument, op+": "+fmt.Sprintf(format, args...))
}
