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
	if e := s.lookupLocked(d); e != nil {
		if !s.addScopesLocked(e, scopes) {
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
	if e := s.lookupLocked(d); e != nil {
		return scopeSetMembers(s.index.scopes.value(e.scopes))
	}
	return nil
}

// addScopesLocked adds scopes to e's set and reports whether any was new.
// Entries share interned sets, so the entry moves to the set with them.
func (s *Store) addScopesLocked(e *entry, scopes []string) bool {
	key := s.index.scopes.value(e.scopes)
	var added []string
	for _, sc := range scopes {
		if !scopeSetHas(key, sc) {
			added = append(added, sc)
		}
	}
	if len(added) == 0 {
		return false
	}
	set := s.index.scopes.add(scopeSetKey(append(scopeSetMembers(key), added...)))
	s.index.scopes.drop(e.scopes)
	e.scopes = set
	return true
}

// Allowed reports whether Allow(d, scope) was recorded for the committed
// entry d or for the fill of d in progress.
func (s *Store) Allowed(d digest.Digest, scope string) bool {
	if checkDigest(d) != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.lookupLocked(d); e != nil {
		return scopeSetHas(s.index.scopes.value(e.scopes), scope)
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
