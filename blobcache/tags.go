package blobcache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
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

// tagPath hashes the opaque key: keys hold '/', ':' and arbitrary length,
// none of which belong in a file name.
func (s *Store) tagPath(key string) string {
	sum := sha256.Sum256([]byte(key))
	h := hex.EncodeToString(sum[:])
	return filepath.Join(s.tagsDir, h[:2], h+".json")
}

// Tag returns the record for key. Records are loaded lazily from disk and
// then kept in memory. A missing or unreadable record is a miss. The record
// may point to a digest that is no longer cached (tags outlive eviction).
func (s *Store) Tag(key string) (Tag, bool) {
	s.tagMu.Lock()
	defer s.tagMu.Unlock()
	if t, ok := s.tags[key]; ok {
		return t, true
	}
	f, err := os.Open(s.tagPath(key))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Debug("cannot read tag record", zap.Error(err))
		}
		return Tag{}, false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMetaFile+1))
	if err != nil {
		return Tag{}, false
	}
	t, err := parseTag(b, key)
	if err != nil {
		s.log.Debug("ignoring bad tag record", zap.Error(err))
		return Tag{}, false
	}
	s.tags[key] = t
	return t, true
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
	b, err := json.Marshal(tagRecord{Key: key, Digest: t.Digest, MediaType: t.MediaType, Size: t.Size, Checked: t.Checked})
	if err != nil {
		return err
	}
	s.tagMu.Lock()
	defer s.tagMu.Unlock()
	prev, had := s.tags[key]
	// Rewriting the record it already holds (a record taken from the
	// remote, stored again as is) sends the remote nothing.
	if upload && (!had || !prev.same(t)) {
		s.queueUpload(uploadJob{tagKey: key, tag: t})
	}
	if err := s.writeFileAtomic(s.tagPath(key), b); err != nil {
		// Keep serving the fresh record from memory; only a restart forgets it.
		s.tags[key] = t
		return fmt.Errorf("blobcache: writing tag record: %w", err)
	}
	s.tags[key] = t
	return nil
}

// same reports whether two records say the same thing.
func (t Tag) same(o Tag) bool {
	return t.Digest == o.Digest && t.MediaType == o.MediaType && t.Size == o.Size && t.Checked.Equal(o.Checked)
}
