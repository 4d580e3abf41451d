package registry

import (
	"container/list"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// memoryCache holds small cached entries (manifests, image configs) in
// memory, least recently used out first, so that the most frequent
// requests of a pull cost no file open. The store stays the source of
// truth: an entry is here only after the store committed it.
type memoryCache struct {
	mu       sync.Mutex
	maxBytes int64
	size     int64
	order    *list.List // of *memoryEntry, front = most recent
	entries  map[digest.Digest]*list.Element
}

type memoryEntry struct {
	digest    digest.Digest
	mediaType string
	body      []byte
	modTime   time.Time
}

// Entries larger than memoryEntryMax stay on disk only.
const memoryEntryMax = 64 << 10

func newMemoryCache(maxBytes int64) *memoryCache {
	return &memoryCache{maxBytes: maxBytes, order: list.New(), entries: map[digest.Digest]*list.Element{}}
}

func (m *memoryCache) get(d digest.Digest) (*memoryEntry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.entries[d]
	if !ok {
		return nil, false
	}
	m.order.MoveToFront(el)
	return el.Value.(*memoryEntry), true
}

func (m *memoryCache) add(e *memoryEntry) {
	if int64(len(e.body)) > memoryEntryMax || m.maxBytes <= 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.entries[e.digest]; ok {
		return
	}
	m.entries[e.digest] = m.order.PushFront(e)
	m.size += int64(len(e.body))
	for m.size > m.maxBytes {
		old := m.order.Back()
		oe := old.Value.(*memoryEntry)
		m.order.Remove(old)
		delete(m.entries, oe.digest)
		m.size -= int64(len(oe.body))
	}
}

// remove drops d (a purge took it out of the store).
func (m *memoryCache) remove(d digest.Digest) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.entries[d]; ok {
		m.order.Remove(el)
		delete(m.entries, d)
		m.size -= int64(len(el.Value.(*memoryEntry).body))
	}
}
