package blobcache

// The store's counts since it was opened (what it evicted, how its shared
// tier fared), for metrics, reported with its Stats (enumerate.go); and
// the report of each fill that proved right.

import (
	"sync/atomic"
	"time"
)

// counters are the store's counts, updated where the events happen.
type counters struct {
	evictions        atomic.Uint64
	sharedTierErrors atomic.Uint64
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
