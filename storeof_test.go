package dockerproxy

import "github.com/caddy-dockerproxy/dockerproxy/blobcache"

// StoreOf returns the store the pool holds for a cache directory, or nil.
func StoreOf(dir string) *blobcache.Store {
	var s *blobcache.Store
	stores.Range(func(key, value any) bool {
		if key == dir {
			s = value.(*dirCache).store
			return false
		}
		return true
	})
	return s
}
