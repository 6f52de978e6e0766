//go:build pkcs11

package pkcs11

import (
	"context"
	"errors"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/kms-plugin/kms-plugin/providers"
)

// lostCodes mean that the session, the login or the token is gone (or the
// module failed): the call may succeed once the provider has reconnected.
var lostCodes = map[p11.Error]bool{
	p11.CKR_SESSION_HANDLE_INVALID:    true,
	p11.CKR_SESSION_CLOSED:            true,
	p11.CKR_SESSION_COUNT:             true,
	p11.CKR_TOKEN_NOT_PRESENT:         true,
	p11.CKR_TOKEN_NOT_RECOGNIZED:      true,
	p11.CKR_DEVICE_REMOVED:            true,
	p11.CKR_DEVICE_ERROR:              true,
	p11.CKR_DEVICE_MEMORY:             true,
	p11.CKR_HOST_MEMORY:               true,
	p11.CKR_GENERAL_ERROR:             true,
	p11.CKR_FUNCTION_FAILED:           true,
	p11.CKR_CRYPTOKI_NOT_INITIALIZED:  true,
	p11.CKR_USER_NOT_LOGGED_IN:        true,
	p11.CKR_SLOT_ID_INVALID:           true,
	p11.CKR_OBJECT_HANDLE_INVALID:     true,
	p11.CKR_KEY_HANDLE_INVALID:        true,
	p11.CKR_OPERATION_ACTIVE:          true,
	p11.CKR_OPERATION_NOT_INITIALIZED: true,
	p11.CKR_CANT_LOCK:                 true,
	p11.CKR_FUNCTION_CANCELED:         true,
	p11.CKR_TOKEN_WRITE_PROTECTED:     true,
}

// ckrAEADDecryptFailed is PKCS#11 3.0's CKR_AEAD_DECRYPT_FAILED, which
// miekg/pkcs11 v1.1 (2.40 headers) does not name.
const ckrAEADDecryptFailed p11.Error = 0x35

// deniedCodes mean the token refused the PIN.
var deniedCodes = map[p11.Error]bool{
	p11.CKR_PIN_INCORRECT: true,
	p11.CKR_PIN_LOCKED:    true,
	p11.CKR_PIN_EXPIRED:   true,
	p11.CKR_PIN_INVALID:   true,
	p11.CKR_PIN_LEN_RANGE: true,
}

// classify maps a module error onto the providers sentinels, keeping the
// CKR_ name in the text. It never sees the PIN: no call that takes the
// PIN puts it in an error.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var e p11.Error
	if !errors.As(err, &e) {
		return err
	}
	switch {
	case lostCodes[e]:
		return fmt.Errorf("%w: %w", providers.ErrUnavailable, err)
	case deniedCodes[e]:
		return fmt.Errorf("%w: %w", providers.ErrPermissionDenied, err)
	case e == p11.CKR_ENCRYPTED_DATA_INVALID, e == p11.CKR_ENCRYPTED_DATA_LEN_RANGE, e == ckrAEADDecryptFailed:
		return fmt.Errorf("authentication failed: %w: %w", providers.ErrInvalidCiphertext, err)
	case e == p11.CKR_KEY_FUNCTION_NOT_PERMITTED:
		return fmt.Errorf("the token refuses this use of the key: %w: %w", providers.ErrKeyRetired, err)
	case e == p11.CKR_MECHANISM_INVALID, e == p11.CKR_MECHANISM_PARAM_INVALID, e == p11.CKR_KEY_TYPE_INCONSISTENT,
		e == p11.CKR_TEMPLATE_INCONSISTENT, e == p11.CKR_TEMPLATE_INCOMPLETE, e == p11.CKR_ATTRIBUTE_VALUE_INVALID,
		e == p11.CKR_FUNCTION_NOT_SUPPORTED:
		return fmt.Errorf("the token does not support what kms-plugin needs: %w: %w", providers.ErrNotConfigured, err)
	}
	return err
}

// isLost reports whether err (as classify returned it) means the
// connection to the token must be rebuilt.
func isLost(err error) bool {
	var e p11.Error
	return errors.As(err, &e) && lostCodes[e]
}
