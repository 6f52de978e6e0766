package vault

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"
)

// decryptCache holds recently decrypted DEK seeds, bounded in count (least
// recently used goes first) and in age. It trades a security property for
// availability: while an entry lives, a revoked or retired key still
// "decrypts" that ciphertext without asking Vault. It is off unless an
// operator sets --vault-decrypt-cache-size; the kube-apiserver already
// caches decrypted seeds itself.
type decryptCache struct {
	size int
	ttl  time.Duration
	now  func() time.Time

	mu    sync.Mutex
	order *list.List // front: most recently used
	items map[cacheKey]*list.Element
}

type cacheKey [sha256.Size]byte

type cacheEntry struct {
	key       cacheKey
	version   int64
	plaintext []byte
	expires   time.Time
}

func newDecryptCache(size int, ttl time.Duration, now func() time.Time) *decryptCache {
	if size <= 0 {
		return nil
	}
	return &decryptCache{size: size, ttl: ttl, now: now, order: list.New(), items: map[cacheKey]*list.Element{}}
}

// decryptCacheKey is a digest of everything a decryption depends on, so
// that an entry is found only for the very same request.
func decryptCacheKey(keyID string, version int64, ciphertext, aad []byte) cacheKey {
	h := sha256.New()
	var n [8]byte
	for _, part := range [][]byte{[]byte(keyID), ciphertext, aad} {
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	binary.BigEndian.PutUint64(n[:], uint64(version))
	h.Write(n[:])
	var k cacheKey
	h.Sum(k[:0])
	return k
}

// get returns a copy of the cached plaintext.
func (c *decryptCache) get(k cacheKey) ([]byte, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if !c.now().Before(e.expires) {
		c.removeLocked(el)
		return nil, false
	}
	c.order.MoveToFront(el)
	return append([]byte(nil), e.plaintext...), true
}

func (c *decryptCache) put(k cacheKey, version int64, plaintext []byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.removeLocked(el)
	}
	e := &cacheEntry{key: k, version: version, plaintext: append([]byte(nil), plaintext...), expires: c.now().Add(c.ttl)}
	c.items[k] = c.order.PushFront(e)
	for c.order.Len() > c.size {
		c.removeLocked(c.order.Back())
	}
}

// dropBelow forgets entries of versions below minVersion (retired).
func (c *decryptCache) dropBelow(minVersion int64) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.order.Front(); el != nil; {
		next := el.Next()
		if el.Value.(*cacheEntry).version < minVersion {
			c.removeLocked(el)
		}
		el = next
	}
}

// purge forgets everything, zeroing the plaintexts.
func (c *decryptCache) purge() {
	c.dropBelow(1<<63 - 1)
}

func (c *decryptCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

func (c *decryptCache) removeLocked(el *list.Element) {
	e := el.Value.(*cacheEntry)
	clear(e.plaintext)
	c.order.Remove(el)
	delete(c.items, e.key)
}
