//go:build !baseline

package main

import "github.com/caddy-dockerproxy/dockerproxy/blobcache"

// variant names the store this binary was built with.
const variant = "current"

// waitIndexed waits until the store's index is complete: it loads in the
// background.
func waitIndexed(s *blobcache.Store) { <-s.IndexLoaded() }
