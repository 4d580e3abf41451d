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
		s.evictLocked()
	}
}

// evictLocked removes the least recently used unpinned entries and tag
// records until they fit MaxSize. Pinned entries are skipped, so the store
// may stay above MaxSize until their readers close (unpin calls back here).
func (s *Store) evictLocked() {
	if s.opts.MaxSize <= 0 || s.closed {
		return
	}
	el := s.lru.Back()
	for s.total+s.tagTotal > s.opts.MaxSize {
		for el != nil && el.Value.(*entry).pins > 0 {
			el = el.Prev()
		}
		tel := s.tagLRU.Back()
		switch {
		case tel != nil && (el == nil || !el.Value.(*entry).used.Before(tel.Value.(*tagEntry).used)):
			s.removeTagLocked(tel.Value.(*tagEntry))
		case el != nil:
			prev := el.Prev()
			s.removeLocked(el.Value.(*entry))
			el = prev
		default:
			return // all pinned
		}
	}
}

// removeLocked deletes an entry from the index and the disk. Data goes
// first: a sidecar without data is cleaned at Open, and Get never sees the
// pair half gone because the index entry is already gone.
func (s *Store) removeLocked(e *entry) {
	s.forgetLocked(e)
	dataPath, metaPath := s.paths(e.info.Digest)
	if err := os.Remove(dataPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cannot remove evicted cache entry", zap.Error(err))
	}
	os.Remove(metaPath)
}

func (s *Store) forgetLocked(e *entry) {
	delete(s.entries, e.info.Digest)
	s.lru.Remove(e.elem)
	s.total -= e.info.Size
}

// remove deletes an unpinned entry (tests and benchmarks).
func (s *Store) remove(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[d]
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
	// Evict only if that makes enough room: least recently used first.
	var victims []*entry
	gain := free
	for el := s.lru.Back(); gain < need && el != nil; el = el.Prev() {
		if e := el.Value.(*entry); e.pins == 0 {
			victims = append(victims, e)
			gain += e.info.Size
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
