package blobcache

// The index of committed entries, shaped to stay small at millions of
// entries: entries live in fixed-size chunks of a slab (one allocation per
// few thousand entries, and no pointer in them for the garbage collector to
// scan), are found by a map from the digest's raw bytes to their slot, and
// are linked into the recency list by slot numbers. Media types and scope
// sets are interned: a million layers of a few hundred repositories share a
// few hundred scope sets.

import (
	"container/heap"
	"encoding/binary"
	"encoding/hex"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
)

const (
	chunkBits = 10
	chunkSize = 1 << chunkBits
)

// slotID names an entry's place in the slab; 0 is no entry.
type slotID uint32

// Where an entry is: free (a slot to reuse), in the recency list, in the
// load heap (indexed by the background loader, not used since), or dead
// (forgotten while pinned: its slot is freed when the last pin goes).
const (
	slotFree uint8 = iota
	slotListed
	slotHeaped
	slotDead
)

// entry is one committed digest in the index, guarded by Store.mu. Its
// address is stable (chunks never move), so Blobs and fills keep *entry.
type entry struct {
	hash    [32]byte // the raw sha256 digest; other algorithms: index.long
	size    int64
	modTime int64  // commit time (unix ns), served as Last-Modified
	used    int64  // recency (unix ns), in memory
	touched uint32 // unix seconds when used was last written to the file's atime
	media   uint32 // interned media type
	scopes  uint32 // interned scope set
	pins    int32  // open Blobs and Readers; a pinned entry is never removed
	id      slotID
	prev    slotID // toward the most recently used
	next    slotID // toward the least recently used
	where   uint8
}

// heapItem is an entry indexed by the loader, keyed by its recency then.
// An item whose entry was used (moved to the list), removed or replaced
// since is stale and skipped.
type heapItem struct {
	used int64
	id   slotID
}

type loadHeap []heapItem

func (h loadHeap) Len() int           { return len(h) }
func (h loadHeap) Less(i, j int) bool { return h[i].used < h[j].used }
func (h loadHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *loadHeap) Push(x any)        { *h = append(*h, x.(heapItem)) }
func (h *loadHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

// index holds the committed entries. Not safe for concurrent use: the
// Store guards it with its mutex.
type index struct {
	chunks   []*[chunkSize]entry
	free     []slotID
	nextSlot slotID // first slot never used

	bySha256 map[[32]byte]slotID
	// long holds digests of the other algorithms (sha384, sha512): rare.
	long     map[digest.Digest]slotID
	longName map[slotID]digest.Digest

	count      int
	head, tail slotID // recency list: head = most recently used

	// loaded holds entries that the background loader indexed and nobody
	// used since, least recent first; while it is non-empty, eviction
	// takes the older of its minimum and the list's tail.
	loaded loadHeap

	media  interner // media types
	scopes interner // scope sets (see scopeSetKey)
}

func newIndex() *index {
	ix := &index{
		bySha256: make(map[[32]byte]slotID),
		long:     make(map[digest.Digest]slotID),
		longName: make(map[slotID]digest.Digest),
		nextSlot: 1,
	}
	ix.media.init()
	ix.scopes.init()
	return ix
}

func (ix *index) at(id slotID) *entry {
	return &ix.chunks[id>>chunkBits][id&(chunkSize-1)]
}

// find returns d's entry, or nil.
func (ix *index) find(d digest.Digest) *entry {
	var id slotID
	if d.Algorithm() == digest.SHA256 {
		var h [32]byte
		if _, err := hex.Decode(h[:], []byte(d.Encoded())); err != nil {
			return nil
		}
		id = ix.bySha256[h]
	} else {
		id = ix.long[d]
	}
	if id == 0 {
		return nil
	}
	return ix.at(id)
}

// digestOf rebuilds the digest of an entry.
func (ix *index) digestOf(e *entry) digest.Digest {
	if d, ok := ix.longName[e.id]; ok {
		return d
	}
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(e.hash[:]))
}

func (ix *index) info(e *entry) Info {
	return Info{Digest: ix.digestOf(e), Size: e.size, MediaType: ix.media.value(e.media)}
}

// add indexes a new entry for d (not indexed yet), outside any order; the
// caller puts it in the list or the load heap. scopes is an interned set
// whose reference passes to the entry.
func (ix *index) add(d digest.Digest, size int64, mediaType string, scopes uint32, modTime, used time.Time) *entry {
	id := ix.allocSlot()
	e := ix.at(id)
	*e = entry{id: id, size: size, modTime: modTime.UnixNano(), used: used.UnixNano(), touched: unixSeconds(used),
		media: ix.media.add(mediaType), scopes: scopes}
	if d.Algorithm() == digest.SHA256 {
		_, _ = hex.Decode(e.hash[:], []byte(d.Encoded())) // validated by the caller
		ix.bySha256[e.hash] = id
	} else {
		ix.long[d] = id
		ix.longName[id] = d
	}
	ix.count++
	return e
}

func (ix *index) allocSlot() slotID {
	if n := len(ix.free); n > 0 {
		id := ix.free[n-1]
		ix.free = ix.free[:n-1]
		return id
	}
	id := ix.nextSlot
	if int(id>>chunkBits) == len(ix.chunks) {
		ix.chunks = append(ix.chunks, new([chunkSize]entry))
	}
	ix.nextSlot++
	return id
}

// forget takes e out of the lookup and the order; its slot is reused at
// once, or when its last pin goes (see release).
func (ix *index) forget(e *entry) {
	switch e.where {
	case slotListed:
		ix.unlink(e)
	case slotDead, slotFree:
		return
	}
	if d, ok := ix.longName[e.id]; ok {
		delete(ix.long, d)
		delete(ix.longName, e.id)
	} else {
		delete(ix.bySha256, e.hash)
	}
	ix.count--
	ix.media.drop(e.media)
	ix.scopes.drop(e.scopes)
	e.media, e.scopes = 0, 0
	e.where = slotDead
	if e.pins == 0 {
		ix.release(e)
	}
}

// release frees the slot of a dead entry whose last pin went.
func (ix *index) release(e *entry) {
	if e.where != slotDead || e.pins > 0 {
		return
	}
	id := e.id
	*e = entry{}
	ix.free = append(ix.free, id)
}

// pushFront puts e at the front of the recency list (most recent).
func (ix *index) pushFront(e *entry) {
	e.where = slotListed
	e.prev, e.next = 0, ix.head
	if ix.head != 0 {
		ix.at(ix.head).prev = e.id
	} else {
		ix.tail = e.id
	}
	ix.head = e.id
}

// pushBack puts e at the back of the recency list (least recent).
func (ix *index) pushBack(e *entry) {
	e.where = slotListed
	e.next, e.prev = 0, ix.tail
	if ix.tail != 0 {
		ix.at(ix.tail).next = e.id
	} else {
		ix.head = e.id
	}
	ix.tail = e.id
}

func (ix *index) unlink(e *entry) {
	if e.prev != 0 {
		ix.at(e.prev).next = e.next
	} else {
		ix.head = e.next
	}
	if e.next != 0 {
		ix.at(e.next).prev = e.prev
	} else {
		ix.tail = e.prev
	}
	e.prev, e.next = 0, 0
}

// touch makes e the most recently used entry.
func (ix *index) touch(e *entry) {
	if e.where == slotListed {
		if ix.head == e.id {
			return
		}
		ix.unlink(e)
	}
	ix.pushFront(e) // from the load heap: its item there goes stale
}

// heapPush files an entry indexed by the loader under its recency.
func (ix *index) heapPush(e *entry) {
	e.where = slotHeaped
	heap.Push(&ix.loaded, heapItem{used: e.used, id: e.id})
}

// heapValid reports whether it still stands for an entry in the heap.
func (ix *index) heapValid(it heapItem) bool {
	e := ix.at(it.id)
	return e.where == slotHeaped && e.used == it.used
}

// oldestLoaded returns the least recently used entry of the load heap that
// is not pinned, dropping stale items on the way; nil if none.
func (ix *index) oldestLoaded() *entry {
	for len(ix.loaded) > 0 {
		it := ix.loaded[0]
		if !ix.heapValid(it) {
			heap.Pop(&ix.loaded)
			continue
		}
		e := ix.at(it.id)
		if e.pins > 0 {
			// Pinned without being used (an upload reads it): it goes to
			// the list's back, still the oldest known there.
			heap.Pop(&ix.loaded)
			ix.pushBack(e)
			continue
		}
		return e
	}
	return nil
}

// settleLoaded moves the whole load heap to the back of the recency list,
// most recent first, once the loader is done: from then on the list alone
// holds the LRU order. Every entry in the heap was used before the store
// opened, so before every entry in the list.
func (ix *index) settleLoaded() {
	items := ix.loaded
	ix.loaded = nil
	sort.Slice(items, func(i, j int) bool { return items[i].used > items[j].used })
	for _, it := range items {
		if ix.heapValid(it) {
			ix.pushBack(ix.at(it.id))
		}
	}
}

func unixSeconds(t time.Time) uint32 {
	s := t.Unix()
	if s < 0 {
		return 0
	}
	if s > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(s)
}

// interner gives each distinct string a small number, counting references
// so that a string nobody uses any more goes.
type interner struct {
	ids  map[string]uint32
	vals []string // by id; 0 is ""
	refs []int
	free []uint32
}

func (in *interner) init() {
	in.ids = make(map[string]uint32)
	in.vals = []string{""}
	in.refs = []int{0}
}

// add takes a reference to v and returns its id; "" is 0 and not counted.
func (in *interner) add(v string) uint32 {
	if v == "" {
		return 0
	}
	if id, ok := in.ids[v]; ok {
		in.refs[id]++
		return id
	}
	var id uint32
	if n := len(in.free); n > 0 {
		id = in.free[n-1]
		in.free = in.free[:n-1]
		in.vals[id], in.refs[id] = v, 1
	} else {
		id = uint32(len(in.vals))
		in.vals = append(in.vals, v)
		in.refs = append(in.refs, 1)
	}
	in.ids[v] = id
	return id
}

func (in *interner) drop(id uint32) {
	if id == 0 {
		return
	}
	in.refs[id]--
	if in.refs[id] == 0 {
		delete(in.ids, in.vals[id])
		in.vals[id] = ""
		in.free = append(in.free, id)
	}
}

func (in *interner) value(id uint32) string { return in.vals[id] }

// scopeSetKey encodes a set of scopes as one string: sorted, each prefixed
// by its length, so that no two different sets share a key whatever bytes
// the scopes hold.
func scopeSetKey(scopes []string) string {
	if len(scopes) == 0 {
		return ""
	}
	sorted := append([]string(nil), scopes...)
	sort.Strings(sorted)
	var b []byte
	last := ""
	for i, sc := range sorted {
		if i > 0 && sc == last {
			continue
		}
		last = sc
		b = binary.AppendUvarint(b, uint64(len(sc)))
		b = append(b, sc...)
	}
	return string(b)
}

// scopeSetMembers decodes a key of scopeSetKey, sorted.
func scopeSetMembers(key string) []string {
	var out []string
	b := []byte(key)
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return out // never happens: the keys are ours
		}
		out = append(out, string(b[k:k+int(n)]))
		b = b[k+int(n):]
	}
	return out
}

// scopeSetHas reports whether the set key holds scope, without decoding it
// into a slice.
func scopeSetHas(key, scope string) bool {
	b := []byte(key)
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return false
		}
		if string(b[k:k+int(n)]) == scope {
			return true
		}
		b = b[k+int(n):]
	}
	return false
}
