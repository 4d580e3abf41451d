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
	"sort"
	"strings"
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
// (least recently used first); its content is read from disk on first use.
// Guarded by Store.mu.
type tagEntry struct {
	name   string // sha256 hex of the key: the file's name
	size   int64  // what the record counts against MaxSize
	used   time.Time
	elem   *list.Element // in Store.tagLRU
	loaded bool          // key and tag hold the file's content
	key    string
	tag    Tag
}

// tagBlock is what a record is counted as at least: a small file takes a
// block of the file system, whatever its length.
const tagBlock = 4096

func tagSize(fileSize int64) int64 {
	return (fileSize + tagBlock - 1) / tagBlock * tagBlock
}

// tagName hashes the opaque key: keys hold '/', ':' and arbitrary length,
// none of which belong in a file name.
func tagName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func (s *Store) tagFile(name string) string {
	return filepath.Join(s.tagsDir, name[:2], name+".json")
}

func (s *Store) tagPath(key string) string { return s.tagFile(tagName(key)) }

// loadTags indexes the records under tags/ from file stats alone, oldest
// use first, as load does for entries.
func (s *Store) loadTags() error {
	prefixes, err := prefixDirs(s.tagsDir)
	if err != nil {
		return err
	}
	var loaded []*tagEntry
	for _, prefix := range prefixes {
		des, err := os.ReadDir(filepath.Join(s.tagsDir, prefix))
		if err != nil {
			s.log.Warn("cannot list tag records", zap.String("dir", prefix), zap.Error(err))
			continue
		}
		for _, de := range des {
			name, ok := strings.CutSuffix(de.Name(), ".json")
			if !ok || len(name) != sha256.Size*2 || !isLowerHex(name) || name[:2] != prefix || !de.Type().IsRegular() {
				continue
			}
			fi, err := de.Info()
			if err != nil {
				continue
			}
			used := fi.ModTime()
			if at := accessTime(fi); at.After(used) {
				used = at
			}
			loaded = append(loaded, &tagEntry{name: name, size: tagSize(fi.Size()), used: used})
		}
	}
	sort.Slice(loaded, func(i, j int) bool { return loaded[i].used.Before(loaded[j].used) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, te := range loaded {
		te.elem = s.tagLRU.PushFront(te)
		s.tagIndex[te.name] = te
		s.tagTotal += te.size
	}
	return nil
}

// Tag returns the record for key and counts it as used. A record is read
// from disk on first use and then held in memory. A missing or unreadable
// record is a miss. The record may point to a digest that is no longer
// cached (records and entries are evicted independently).
func (s *Store) Tag(key string) (Tag, bool) {
	name := tagName(key)
	s.mu.Lock()
	te := s.tagIndex[name]
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
	return s.usedTagLocked(te, key)
}

// usedTagLocked answers Tag from a loaded index entry (or its absence).
func (s *Store) usedTagLocked(te *tagEntry, key string) (Tag, bool) {
	if te == nil || !te.loaded || te.key != key {
		return Tag{}, false
	}
	te.used = time.Now()
	s.tagLRU.MoveToFront(te.elem)
	return te.tag, true
}

func (s *Store) readTag(name, key string) (Tag, error) {
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
	// Rewriting the record it already holds (a record taken from the
	// remote, stored again as is) sends the remote nothing.
	if upload && (te == nil || !te.loaded || te.key != key || !te.tag.same(t)) {
		s.queueUpload(uploadJob{tagKey: key, tag: t})
	}
	if werr == nil {
		werr = place(tmp, s.tagFile(name))
	}
	// On a write error the record is still served from memory; only a
	// restart forgets it.
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
	delete(s.tagIndex, te.name)
	s.tagLRU.Remove(te.elem)
	s.tagTotal -= te.size
}

// same reports whether two records say the same thing.
func (t Tag) same(o Tag) bool {
	return t.Digest == o.Digest && t.MediaType == o.MediaType && t.Size == o.Size && t.Checked.Equal(o.Checked)
}
