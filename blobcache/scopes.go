package blobcache

// Access scopes: who may read an entry, persisted in its sidecar.

import (
	"fmt"
	"sort"

	"github.com/opencontainers/go-digest"
)

// Allow records that each scope (an opaque string such as
// "docker.io/library/alpine") may read d. It is persisted in the sidecar; on
// a digest still being filled it is remembered and persisted at commit.
// Errors wrap ErrNotFound when d is neither committed nor being filled.
func (s *Store) Allow(d digest.Digest, scopes ...string) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[d]; e != nil {
		added := false
		for _, scope := range scopes {
			if _, ok := e.scopes[scope]; !ok {
				e.scopes[scope] = struct{}{}
				added = true
			}
		}
		if !added {
			return nil
		}
		if err := s.writeSidecarLocked(e); err != nil {
			// Still allowed in memory; only a restart would forget it.
			return fmt.Errorf("blobcache: persisting scope: %w", err)
		}
		return nil
	}
	if f := s.fills[d]; f != nil {
		if f.scopes == nil {
			f.scopes = make(map[string]struct{})
		}
		for _, scope := range scopes {
			f.scopes[scope] = struct{}{}
		}
		return nil
	}
	return fmt.Errorf("%w: %s", ErrNotFound, d)
}

// scopesOf returns the scopes recorded for the committed entry d, sorted.
func (s *Store) scopesOf(d digest.Digest) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[d]; e != nil {
		return sortedScopes(e.scopes)
	}
	return nil
}

// Allowed reports whether Allow(d, scope) was recorded for the committed
// entry d or for the fill of d in progress.
func (s *Store) Allowed(d digest.Digest, scope string) bool {
	if checkDigest(d) != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[d]; e != nil {
		_, ok := e.scopes[scope]
		return ok
	}
	if f := s.fills[d]; f != nil {
		_, ok := f.scopes[scope]
		return ok
	}
	return false
}

// sortedScopes returns the keys of a scope set, sorted.
func sortedScopes(set map[string]struct{}) []string {
	out := make([]string, 0, len(set))
	for sc := range set {
		out = append(out, sc)
	}
	sort.Strings(out)
	return out
}
