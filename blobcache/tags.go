package blobcache

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
)

// Tag records what a tag (or any other mutable reference) pointed to when it
// was last checked upstream. Freshness policy is the caller's.
type Tag struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
	Checked   time.Time
}

// tagEntry is a tag record in the index. Every record on disk has one, so
// that records count against MaxSize and are evicted with the entries
// (least recently used first); its content is read from disk on use and
// held only while it is among the maxHotTags most recently used.
// Guarded by Store.mu.
type tagEntry struct {
	name   [32]byte // sha256 of the key: the file's name
	size   int64    // what the record counts against MaxSize
	used   time.Time
	elem   *list.Element // in Store.tagLRU
	hot    *list.Element // in Store.tagHot while loaded
	loaded bool          // key and tag hold the file's content
	key    string
	tag    Tag
}

// maxHotTags is how many tag records keep their content in memory: the
// ones clients ask for again and again; the others cost a small file read
// on their next use, next to the HEAD upstream that an old record needs.
const maxHotTags = 4096

// tagBlock is what a record is counted as at least: a small file takes a
// block of the file system, whatever its length.
const tagBlock = 4096

func tagSize(fileSize int64) int64 {
	return (fileSize + tagBlock - 1) / tagBlock * tagBlock
}

// tagName hashes the opaque key: keys hold '/', ':' and arbitrary length,
// none of which belong in a file name.
func tagName(key string) [32]byte {
	return sha256.Sum256([]byte(key))
}

func (s *Store) tagFile(name [32]byte) string {
	h := hex.EncodeToString(name[:])
	return filepath.Join(s.tagsDir, h[:2], h+".json")
}

func (s *Store) tagPath(key string) string { return s.tagFile(tagName(key)) }

// Tag returns the record for key and counts it as used. A record is read
// from disk on first use and then held in memory. A missing or unreadable
// record is a miss. The record may point to a digest that is no longer
// cached (records and entries are evicted independently).
func (s *Store) Tag(key string) (Tag, bool) {
	name := tagName(key)
	s.mu.Lock()
	te := s.tagIndex[name]
	if te == nil && s.load.running {
		te = s.probeTagLocked(name)
	}
	if te == nil || te.loaded {
		defer s.mu.Unlock()
		return s.usedTagLocked(te, key)
	}
	s.mu.Unlock()

	t, err := s.readTag(name, key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.tagIndex[name]; cur != te || te.loaded {
		// Replaced or evicted meanwhile: the index knows better.
		return s.usedTagLocked(cur, key)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			s.forgetTagLocked(te) // removed behind the store's back
		} else {
			s.log.Debug("ignoring a bad tag record", zap.Error(err))
		}
		return Tag{}, false
	}
	te.loaded, te.key, te.tag = true, key, t
	s.holdTagLocked(te)
	return s.usedTagLocked(te, key)
}

// probeTagLocked indexes the record named name if it is on disk, while
// the loader has not indexed it yet.
func (s *Store) probeTagLocked(name [32]byte) *tagEntry {
	fi, err := os.Stat(s.tagFile(name))
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	te := &tagEntry{name: name, size: tagSize(fi.Size()), used: usedTime(fi)}
	te.elem = s.tagLRU.PushFront(te)
	s.tagIndex[name] = te
	s.tagTotal += te.size
	return te
}

// holdTagLocked keeps te's content in memory, as one of the most recently
// used records; the least recently used one beyond maxHotTags lets its
// content go.
func (s *Store) holdTagLocked(te *tagEntry) {
	if te.hot != nil {
		s.tagHot.MoveToFront(te.hot)
		return
	}
	te.hot = s.tagHot.PushFront(te)
	for s.tagHot.Len() > s.hotTags {
		s.unloadTagLocked(s.tagHot.Back().Value.(*tagEntry))
	}
}

// unloadTagLocked lets go of a record's content; the index keeps it.
func (s *Store) unloadTagLocked(te *tagEntry) {
	if te.hot != nil {
		s.tagHot.Remove(te.hot)
		te.hot = nil
	}
	te.loaded, te.key, te.tag = false, "", Tag{}
}

// usedTagLocked answers Tag from a loaded index entry (or its absence).
func (s *Store) usedTagLocked(te *tagEntry, key string) (Tag, bool) {
	if te == nil || !te.loaded || te.key != key {
		return Tag{}, false
	}
	te.used = time.Now()
	s.tagLRU.MoveToFront(te.elem)
	s.holdTagLocked(te)
	return te.tag, true
}

func (s *Store) readTag(name [32]byte, key string) (Tag, error) {
	f, err := os.Open(s.tagFile(name))
	if err != nil {
		return Tag{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMetaFile+1))
	if err != nil {
		return Tag{}, err
	}
	return parseTag(b, key)
}

// SetTag stores the record for key, atomically replacing any previous one.
// A record that changed is also written to the remote, in the background.
func (s *Store) SetTag(key string, t Tag) error {
	return s.setTag(key, t, true)
}

// SetLocalTag is SetTag for a record that stays with this store: it is
// never written to the remote.
func (s *Store) SetLocalTag(key string, t Tag) error {
	return s.setTag(key, t, false)
}

func (s *Store) setTag(key string, t Tag, upload bool) error {
	if err := checkDigest(t.Digest); err != nil {
		return err
	}
	if t.Size < 0 {
		return fmt.Errorf("blobcache: negative tag size %d", t.Size)
	}
	b, err := MarshalTagRecord(key, t)
	if err != nil {
		return err
	}
	name := tagName(key)
	// Written aside first; renamed into place and indexed under s.mu,
	// where eviction removes records, so the two never cross.
	tmp, werr := s.writeTemp(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	te := s.tagIndex[name]
	if te == nil && s.load.running {
		te = s.probeTagLocked(name) // so that its old size is counted, then replaced
	}
	// Rewriting the record it already holds (a record taken from the
	// remote, stored again as is) sends the remote nothing.
	if upload && (te == nil || !te.loaded || te.key != key || !te.tag.same(t)) {
		s.queueUpload(uploadJob{tagKey: key, tag: t})
	}
	if werr == nil {
		werr = place(tmp, s.tagFile(name))
	}
	// On a write error the record is still served from memory while it
	// stays hot; a restart, or falling out of the hot set, forgets it.
	if te == nil {
		te = &tagEntry{name: name}
		te.elem = s.tagLRU.PushFront(te)
		s.tagIndex[name] = te
	} else {
		s.tagLRU.MoveToFront(te.elem)
	}
	size := tagSize(int64(len(b)))
	s.tagTotal += size - te.size
	te.size, te.used = size, time.Now()
	te.loaded, te.key, te.tag = true, key, t
	s.holdTagLocked(te)
	s.evictLocked()
	if werr != nil {
		return fmt.Errorf("blobcache: writing tag record: %w", werr)
	}
	return nil
}

// removeTagLocked deletes a record from the index and the disk.
func (s *Store) removeTagLocked(te *tagEntry) {
	s.forgetTagLocked(te)
	if err := os.Remove(s.tagFile(te.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cannot remove evicted tag record", zap.Error(err))
	}
}

func (s *Store) forgetTagLocked(te *tagEntry) {
	s.load.forgottenTagLocked(te.name)
	s.unloadTagLocked(te)
	delete(s.tagIndex, te.name)
	s.tagLRU.Remove(te.elem)
	s.tagTotal -= te.size
}

// same reports whether two records say the same thing.
func (t Tag) same(o Tag) bool {
	return t.Digest == o.Digest && t.MediaType == o.MediaType && t.Size == o.Size && t.Checked.Equal(o.Checked)
}
