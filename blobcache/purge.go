package blobcache

// Removal on request: an operator drops entries and tag records the store
// would otherwise keep until eviction. Unlike eviction, it does not spare
// an entry being read: the entry leaves the index at once (new requests
// miss), its files go, and whoever has it open reads on from the open file
// until done (the same holds for sendfile and reopen). A fill in progress
// is not touched: what it commits is a new entry.

import (
	"fmt"

	"github.com/opencontainers/go-digest"
)

// Remove deletes the committed entries among digests, read right now or
// not, and returns what it removed. Digests that are not committed (or not
// valid) are skipped.
func (s *Store) Remove(digests ...digest.Digest) []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	var removed []Info
	for _, d := range digests {
		if checkDigest(d) != nil {
			continue
		}
		e := s.lookupLocked(d)
		if e == nil {
			continue
		}
		removed = append(removed, s.index.info(e))
		s.removeLocked(e)
	}
	return removed
}

// RemoveTags deletes the tag records of keys and returns how many there
// were.
func (s *Store) RemoveTags(keys ...string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, key := range keys {
		name := tagName(key)
		te := s.tagIndex[name]
		if te == nil && s.load.running {
			te = s.probeTagLocked(name)
		}
		if te == nil {
			continue
		}
		s.removeTagLocked(te)
		n++
	}
	return n
}

// DropScopes takes the scopes that drop accepts out of the committed entry
// d's set, and persists the set. Fewer scopes never widen access: a client
// whose scope went is checked with the upstream again. drop is called with
// the store locked: it must not call the store.
func (s *Store) DropScopes(d digest.Digest, drop func(scope string) bool) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.lookupLocked(d)
	if e == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, d)
	}
	var kept []string
	members := scopeSetMembers(s.index.scopes.value(e.scopes))
	for _, sc := range members {
		if !drop(sc) {
			kept = append(kept, sc)
		}
	}
	if len(kept) == len(members) {
		return nil
	}
	set := s.index.scopes.add(scopeSetKey(kept))
	s.index.scopes.drop(e.scopes)
	e.scopes = set
	if err := s.writeSidecarLocked(e); err != nil {
		// Narrower in memory already; a restart would bring them back.
		return fmt.Errorf("blobcache: persisting scopes: %w", err)
	}
	return nil
}
