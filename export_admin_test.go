package dockerproxy

import "sync"

// HoldIndexLoad makes the stores opened from now on serve with their
// index still loading, until the returned function is called.
func HoldIndexLoad() (release func()) {
	gate := make(chan struct{})
	indexLoadGate = gate
	var once sync.Once
	return func() {
		once.Do(func() {
			indexLoadGate = nil
			close(gate)
		})
	}
}

// CacheInUse reports whether a config still holds the store of the cache
// directory dir (an absolute path).
func CacheInUse(dir string) bool {
	_, ok := stores.References(dir)
	return ok
}
