package blobcache

// Stats: what an operator watches of a store (its size, its entries, what
// it evicted, how its shared tier fared), read at once, for metrics.

import (
	"sync/atomic"
	"time"
)

// Stats is a store's state and counts since it was opened.
type Stats struct {
	// Bytes is what counts against MaxSize: committed data and tag records.
	Bytes int64
	// MaxBytes is the bound (MaxSize); 0 when unbounded.
	MaxBytes int64
	// Entries is the number of committed entries in the index (while the
	// index loads, those loaded so far and those committed since).
	Entries int
	// TagRecords is the number of tag records.
	TagRecords int
	// Fills is the number of fills in progress, waiting for their
	// leader's upstream answer or copying its bytes.
	Fills int
	// Evictions counts the entries and tag records evicted to stay under
	// MaxSize.
	Evictions uint64
	// SharedTierErrors counts the operations of the shared tier that
	// failed (a call canceled by its caller is none).
	SharedTierErrors uint64
}

// counters are the store's counts, updated where the events happen.
type counters struct {
	evictions        atomic.Uint64
	sharedTierErrors atomic.Uint64
}

// Stats returns the store's state and counts.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Bytes:            s.total + s.tagTotal,
		MaxBytes:         s.opts.MaxSize,
		Entries:          s.index.count,
		TagRecords:       len(s.tagIndex),
		Fills:            len(s.fills),
		Evictions:        s.counters.evictions.Load(),
		SharedTierErrors: s.counters.sharedTierErrors.Load(),
	}
}

// reportFilled calls the fill's OnFilled if its bytes proved right, with
// the time since began (when its copy started).
func (f *Fill) reportFilled(began time.Time) {
	if f.onFilled == nil {
		return
	}
	f.mu.Lock()
	ok, size := f.committed, f.size
	f.mu.Unlock()
	if ok {
		f.onFilled(size, time.Since(began))
	}
}
