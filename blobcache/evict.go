package blobcache

// The size bound: least-recently-used eviction to MaxSize, and room on the
// file system before a fill starts.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
)

// SetMaxSize changes the bound on committed data and tag records (0 =
// unbounded), as a config reload asks, and evicts down to it at once.
func (s *Store) SetMaxSize(n int64) {
	if n < 0 {
		n = 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.MaxSize = n
	s.evictLocked()
}

// Size returns the bytes counted against MaxSize: committed data and tag
// records.
func (s *Store) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total + s.tagTotal
}

func (s *Store) unpin(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.pins--
	if e.pins == 0 {
		s.index.release(e) // if it was forgotten while pinned
		s.evictLocked()
	}
}

// evictLocked removes the least recently used unpinned entries and tag
// records until they fit MaxSize. Pinned entries are skipped, so the store
// may stay above MaxSize until their readers close (unpin calls back here).
// While the index loads, it works on what is indexed: the older of the
// list's tail and the loader's oldest entry goes first. Each removal costs
// the same whatever the number of entries.
func (s *Store) evictLocked() {
	if s.opts.MaxSize <= 0 || s.closed {
		return
	}
	ix := s.index
	id := ix.tail
	for s.total+s.tagTotal > s.opts.MaxSize {
		for id != 0 && ix.at(id).pins > 0 {
			id = ix.at(id).prev
		}
		var victim *entry
		if id != 0 {
			victim = ix.at(id)
		}
		if old := ix.oldestLoaded(); old != nil && (victim == nil || old.used < victim.used) {
			victim = old
		}
		tel := s.tagLRU.Back()
		switch {
		case tel != nil && (victim == nil || victim.used >= tel.Value.(*tagEntry).used.UnixNano()):
			s.removeTagLocked(tel.Value.(*tagEntry))
		case victim != nil:
			if victim.id == id {
				id = victim.prev
			}
			s.removeLocked(victim)
		default:
			return // all pinned
		}
		s.counters.evictions.Add(1)
	}
}

// removeLocked deletes an entry from the index and the disk. Data goes
// first: a sidecar without data is cleaned at Open, and Get never sees the
// pair half gone because the index entry is already gone.
func (s *Store) removeLocked(e *entry) {
	d := s.index.digestOf(e)
	s.forgetLocked(e)
	dataPath, metaPath := s.paths(d)
	if err := os.Remove(dataPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cannot remove evicted cache entry", zap.Error(err))
	}
	os.Remove(metaPath)
}

// forgetLocked takes an entry out of the index. While the loader runs, it
// remembers the digest, so that what the loader read of it before is not
// indexed again.
func (s *Store) forgetLocked(e *entry) {
	s.load.forgottenLocked(s.index.digestOf(e))
	s.total -= e.size
	s.index.forget(e)
}

// remove deletes an unpinned entry (tests and benchmarks).
func (s *Store) remove(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.lookupLocked(d)
	if e == nil || e.pins > 0 {
		return false
	}
	s.removeLocked(e)
	return true
}

// makeRoom checks, before a fill of size bytes starts, that the file
// system has room for it beside the fills already running, evicting least
// recently used entries to make some if need be. A disk that fills up
// mid-fill still works (readers fetch the rest from the upstream), but
// knowing beforehand costs the upstream nothing.
func (s *Store) makeRoom(size int64) error {
	free, err := s.freeSpace()
	if err != nil {
		return nil // cannot tell: let the writes tell
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	need := size + minFreeSpace
	for _, f := range s.fills {
		f.mu.Lock()
		if f.state == stateRunning && f.size > f.written {
			need += f.size - f.written
		}
		f.mu.Unlock()
	}
	if free >= need {
		return nil
	}
	// Evict only if that makes enough room: least recently used first
	// (of the list: while the index loads, what the loader indexed is not
	// counted on here).
	var victims []*entry
	gain := free
	for id := s.index.tail; gain < need && id != 0; id = s.index.at(id).prev {
		if e := s.index.at(id); e.pins == 0 {
			victims = append(victims, e)
			gain += e.size
		}
	}
	if gain >= need {
		for _, e := range victims {
			s.removeLocked(e)
		}
		return nil
	}
	err = fmt.Errorf("no room on the cache's file system for %d bytes (%d available, %d needed with the fills in progress and a reserve of %d)",
		size, free, need, int64(minFreeSpace))
	s.logDiskConditionLocked("no room", err)
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
