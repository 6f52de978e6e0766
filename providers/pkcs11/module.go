//go:build pkcs11

package pkcs11

import (
	"errors"
	"fmt"
	"os"
	"sync"

	p11 "github.com/miekg/pkcs11"

	"github.com/kms-plugin/kms-plugin/providers"
)

// A PKCS#11 module is process-wide state: C_Initialize may run once per
// process until C_Finalize, and a module's library is never unloaded
// (dlclose of a module that links OpenSSL can crash the process at exit).
// modules shares one loaded library per path between every provider in
// the process (the plugin has one; kmsctl and tests may open several),
// initialized while at least one uses it.
var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
)

type module struct {
	path string
	ctx  *p11.Ctx
	refs int
}

// openModule loads and initializes the module at path, or shares the one
// already loaded. C_Initialize gets CKF_OS_LOCKING_OK: the module may use
// the operating system's locks, since the provider calls it from many
// goroutines (one operation per session at a time).
func openModule(path string) (*module, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m := modules[path]; m != nil && m.refs > 0 {
		m.refs++
		return m, nil
	}
	m := modules[path]
	if m == nil {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("pkcs11 module: %w: %w", providers.ErrNotConfigured, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("pkcs11 module %s is not a regular file: %w", path, providers.ErrNotConfigured)
		}
		ctx := p11.New(path)
		if ctx == nil {
			return nil, fmt.Errorf("pkcs11 module %s could not be loaded (not a PKCS#11 library, wrong architecture, or a missing dependency): %w", path, providers.ErrNotConfigured)
		}
		m = &module{path: path, ctx: ctx}
		modules[path] = m
	}
	if err := initialize(m.ctx); err != nil {
		return nil, fmt.Errorf("pkcs11 module %s: C_Initialize: %w", path, classify(err))
	}
	m.refs = 1
	return m, nil
}

// initialize calls C_Initialize with CKF_OS_LOCKING_OK (miekg/pkcs11's
// default). A module that some other code in the process initialized
// already is fine.
func initialize(ctx *p11.Ctx) error {
	err := ctx.Initialize()
	var e p11.Error
	if errors.As(err, &e) && e == p11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		return nil
	}
	return err
}

// reinitialize finalizes and initializes the module again, which makes
// the module look for its tokens afresh (a token that was removed and put
// back). It does so only if this is the module's sole user; otherwise it
// leaves the module as it is and reports false.
func (m *module) reinitialize() (bool, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m.refs != 1 {
		return false, nil
	}
	_ = m.ctx.Finalize()
	if err := initialize(m.ctx); err != nil {
		return true, fmt.Errorf("C_Initialize: %w", classify(err))
	}
	return true, nil
}

// release drops one user; the last one finalizes the module.
func (m *module) release() {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m.refs == 0 {
		return
	}
	m.refs--
	if m.refs == 0 {
		_ = m.ctx.Finalize()
	}
}
