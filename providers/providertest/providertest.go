// Package providertest is the conformance suite that every kms-plugin
// provider must pass. Each backend's tests call Run with a constructor for a
// fresh provider; the suite checks the properties the KMS service relies on.
package providertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/kms/contract"
	"github.com/kms-plugin/kms-plugin/providers"
)

// Run runs the conformance suite. newProvider must return a fresh provider
// with its own key material; the suite closes it. Rotation and retirement
// checks run when the provider implements providers.Rotator and
// providers.Retirer.
func Run(t *testing.T, newProvider func(t *testing.T) providers.Provider) {
	t.Helper()
	fresh := func(t *testing.T) providers.Provider {
		p := newProvider(t)
		t.Cleanup(func() {
			if err := p.Close(); err != nil {
				t.Errorf("Close() = %v", err)
			}
		})
		return p
	}
	aad := []byte("providertest envelope header")

	t.Run("CurrentKeyIsUsable", func(t *testing.T) {
		p := fresh(t)
		k := current(t, p)
		if k.ID == "" || len(k.ID) > contract.MaxKeyIDLen {
			t.Errorf("Current().ID has length %d, want 1..%d", len(k.ID), contract.MaxKeyIDLen)
		}
		if len(k.Ref) == 0 || len(k.Ref) > 64 {
			t.Errorf("Current().Ref has length %d, want 1..64", len(k.Ref))
		}
		again := current(t, p)
		if again.ID != k.ID || !bytes.Equal(again.Ref, k.Ref) {
			t.Errorf("Current() changed without rotation: %q then %q", k.ID, again.ID)
		}
	})

	t.Run("RoundTrip", func(t *testing.T) {
		p := fresh(t)
		k := current(t, p)
		for _, pt := range [][]byte{{0}, bytes.Repeat([]byte{0xa5}, 32), bytes.Repeat([]byte("x"), 900)} {
			ct := encrypt(t, p, k, pt, aad)
			if bytes.Contains(ct, pt) && len(pt) >= 8 {
				t.Errorf("ciphertext contains the plaintext")
			}
			got, err := p.Decrypt(ctx(t), k, ct, aad)
			if err != nil || !bytes.Equal(got, pt) {
				t.Errorf("Decrypt(Encrypt(%d bytes)) = %d bytes, %v; want the plaintext", len(pt), len(got), err)
			}
		}
	})

	t.Run("DistinctCiphertexts", func(t *testing.T) {
		p := fresh(t)
		k := current(t, p)
		pt := bytes.Repeat([]byte{7}, 32)
		a, b := encrypt(t, p, k, pt, aad), encrypt(t, p, k, pt, aad)
		if bytes.Equal(a, b) {
			t.Errorf("two encryptions of the same plaintext gave the same ciphertext")
		}
	})

	t.Run("TamperDetected", func(t *testing.T) {
		p := fresh(t)
		k := current(t, p)
		pt := bytes.Repeat([]byte{1}, 32)
		ct := encrypt(t, p, k, pt, aad)
		cases := map[string]struct {
			key providers.Key
			ct  []byte
			aad []byte
		}{
			"flipped first byte": {k, flip(ct, 0), aad},
			"flipped last byte":  {k, flip(ct, len(ct)-1), aad},
			"truncated":          {k, ct[:len(ct)-1], aad},
			"empty":              {k, nil, aad},
			"other aad":          {k, ct, []byte("another header")},
			"other key_id":       {providers.Key{ID: k.ID + "x", Ref: k.Ref}, ct, aad},
		}
		for name, c := range cases {
			got, err := p.Decrypt(ctx(t), c.key, c.ct, c.aad)
			if err == nil {
				t.Errorf("%s: Decrypt = %d bytes, nil error; want an error", name, len(got))
				continue
			}
			if got != nil {
				t.Errorf("%s: Decrypt returned plaintext with error %v", name, err)
			}
			if !errors.Is(err, providers.ErrInvalidCiphertext) && !errors.Is(err, providers.ErrKeyNotFound) {
				t.Errorf("%s: Decrypt error = %v; want ErrInvalidCiphertext or ErrKeyNotFound", name, err)
			}
		}
	})

	t.Run("CheckHealthy", func(t *testing.T) {
		p := fresh(t)
		if err := p.Check(ctx(t)); err != nil {
			t.Errorf("Check() = %v, want nil", err)
		}
	})

	t.Run("RotationKeepsOldCiphertexts", func(t *testing.T) {
		p := fresh(t)
		r, ok := p.(providers.Rotator)
		if !ok {
			t.Skip("provider does not implement providers.Rotator")
		}
		old := current(t, p)
		pt := []byte("sealed before rotation, 32 bytes")
		ct := encrypt(t, p, old, pt, aad)
		nk, err := r.Rotate(ctx(t))
		if err != nil {
			t.Fatalf("Rotate() = %v", err)
		}
		if nk.ID == old.ID {
			t.Fatalf("Rotate() returned the old key_id %q", nk.ID)
		}
		if cur := current(t, p); cur.ID != nk.ID {
			t.Errorf("Current() after Rotate = %q, want %q", cur.ID, nk.ID)
		}
		if got, err := p.Decrypt(ctx(t), old, ct, aad); err != nil || !bytes.Equal(got, pt) {
			t.Errorf("Decrypt(old ciphertext) after rotation = %q, %v; want the plaintext", got, err)
		}
		ct2 := encrypt(t, p, nk, pt, aad)
		if got, err := p.Decrypt(ctx(t), nk, ct2, aad); err != nil || !bytes.Equal(got, pt) {
			t.Errorf("Decrypt(new ciphertext) = %q, %v; want the plaintext", got, err)
		}
		if _, err := p.Decrypt(ctx(t), old, ct2, aad); err == nil {
			t.Errorf("Decrypt(new ciphertext) with the old key_id succeeded; want an error")
		}
		if l, ok := p.(providers.KeyLister); ok {
			infos, err := l.Keys(ctx(t))
			if err != nil {
				t.Fatalf("Keys() = %v", err)
			}
			ids := map[string]bool{}
			for _, i := range infos {
				ids[i.KeyID] = true
			}
			if !ids[old.ID] || !ids[nk.ID] {
				t.Errorf("Keys() = %+v, want both %q and %q", infos, old.ID, nk.ID)
			}
		}
	})

	t.Run("RetiredKeyRefused", func(t *testing.T) {
		p := fresh(t)
		r, ok1 := p.(providers.Rotator)
		ret, ok2 := p.(providers.Retirer)
		lister, ok3 := p.(providers.KeyLister)
		if !ok1 || !ok2 || !ok3 {
			t.Skip("provider does not implement Rotator, Retirer and KeyLister")
		}
		old := current(t, p)
		pt := []byte("sealed under a key that retires.")
		ct := encrypt(t, p, old, pt, aad)
		nk, err := r.Rotate(ctx(t))
		if err != nil {
			t.Fatalf("Rotate() = %v", err)
		}
		latest := versionOf(t, lister, nk.ID)
		if err := ret.RetireBelow(ctx(t), latest+1); err == nil {
			t.Errorf("RetireBelow(%d) retired the primary version; want an error", latest+1)
		}
		if err := ret.RetireBelow(ctx(t), latest); err != nil {
			t.Fatalf("RetireBelow(%d) = %v", latest, err)
		}
		got, err := p.Decrypt(ctx(t), old, ct, aad)
		if !errors.Is(err, providers.ErrKeyRetired) {
			t.Errorf("Decrypt under a retired key = %q, %v; want ErrKeyRetired", got, err)
		}
		ct2 := encrypt(t, p, nk, pt, aad)
		if got, err := p.Decrypt(ctx(t), nk, ct2, aad); err != nil || !bytes.Equal(got, pt) {
			t.Errorf("Decrypt under the primary after retiring = %q, %v; want the plaintext", got, err)
		}
	})

	t.Run("ConcurrentUse", func(t *testing.T) {
		p := fresh(t)
		k := current(t, p)
		const workers, each = 16, 25
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					pt := fmt.Appendf(nil, "worker %d message %d padding....", w, i)
					ct, err := p.Encrypt(ctx(t), k, pt, aad)
					if err != nil {
						errs <- fmt.Errorf("encrypt: %w", err)
						return
					}
					got, err := p.Decrypt(ctx(t), k, ct, aad)
					if err != nil || !bytes.Equal(got, pt) {
						errs <- fmt.Errorf("decrypt = %q, %v; want %q", got, err, pt)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func current(t *testing.T, p providers.Provider) providers.Key {
	t.Helper()
	k, err := p.Current()
	if err != nil {
		t.Fatalf("Current() = %v", err)
	}
	return k
}

func encrypt(t *testing.T, p providers.Provider, k providers.Key, pt, aad []byte) []byte {
	t.Helper()
	ct, err := p.Encrypt(ctx(t), k, pt, aad)
	if err != nil {
		t.Fatalf("Encrypt(%d bytes) = %v", len(pt), err)
	}
	if len(ct) == 0 {
		t.Fatalf("Encrypt returned an empty ciphertext")
	}
	return ct
}

func versionOf(t *testing.T, l providers.KeyLister, keyID string) int64 {
	t.Helper()
	infos, err := l.Keys(ctx(t))
	if err != nil {
		t.Fatalf("Keys() = %v", err)
	}
	for _, i := range infos {
		if i.KeyID == keyID {
			return i.Version
		}
	}
	t.Fatalf("Keys() lacks %q", keyID)
	return 0
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}
