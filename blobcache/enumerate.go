package blobcache

// Enumeration: what the store holds, for an operator to see (its numbers,
// its entries, its tag records). Lookups by digest or key serve requests;
// these walk the whole store and are meant for an admin call now and then.
//
// While the background loader runs (load.go), the index holds only part
// of the directory: every answer says so (complete false), and is whole
// once IndexLoaded is closed.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
)

// Stats are a store's numbers at one moment.
type Stats struct {
	Dir string
	// Bytes is what counts against MaxSize: DataBytes of committed
	// entries and TagBytes of tag records.
	Bytes, DataBytes, TagBytes int64
	MaxSize                    int64 // 0: unbounded
	Entries                    int
	TagRecords                 int
	Fills                      int // in progress
	// IndexLoading: the background loader still runs, so the counts are
	// of what it has indexed so far.
	IndexLoading bool
	Disk         HealthState
	Remote       RemoteState
	// Evictions counts the entries and tag records evicted to stay under
	// MaxSize since the store was opened.
	Evictions uint64
	// SharedTierErrors counts the operations of the shared tier that
	// failed since the store was opened (a call canceled by its caller
	// is none).
	SharedTierErrors uint64
}

// HealthState is what the store knows of its disk or its shared tier.
type HealthState struct {
	// Healthy: nothing failed since it last worked (a shared tier that
	// is not configured is not healthy).
	Healthy bool
	// Error names the last failure while it is not healthy.
	Error string
	// RetryAt, while in the future, is when it is asked again after a
	// failure; until then requests go without it.
	RetryAt time.Time
}

// RemoteState is the shared tier's state as the store sees it.
type RemoteState struct {
	Configured bool
	HealthState
	// PendingUploads are entries and tag records queued or being uploaded.
	PendingUploads int
}

func (h health) state() HealthState {
	st := HealthState{Healthy: !h.down, RetryAt: h.until}
	if h.down {
		st.Error = h.cause
	}
	return st
}

// Stats returns the store's numbers.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	st := Stats{
		Dir:          s.opts.Dir,
		Bytes:        s.total + s.tagTotal,
		DataBytes:    s.total,
		TagBytes:     s.tagTotal,
		MaxSize:      s.opts.MaxSize,
		Entries:      s.index.count,
		TagRecords:   len(s.tagIndex),
		Fills:        len(s.fills),
		IndexLoading: s.load.running,
		Disk:         s.disk.state(),

		Evictions:        s.counters.evictions.Load(),
		SharedTierErrors: s.counters.sharedTierErrors.Load(),
	}
	s.mu.Unlock()
	s.remote.mu.Lock()
	st.Remote = RemoteState{Configured: s.remote.r != nil, HealthState: s.remote.health.state()}
	st.Remote.Healthy = st.Remote.Healthy && st.Remote.Configured
	s.remote.mu.Unlock()
	u := s.uploads
	u.mu.Lock()
	st.Remote.PendingUploads = u.pending
	u.mu.Unlock()
	return st
}

// Entry is a committed entry as enumeration sees it.
type Entry struct {
	Info
	Scopes  []string  // who may read it (Allow), sorted
	ModTime time.Time // commit time
	Used    time.Time // last use
}

// Entries returns the committed entries whose media type match accepts,
// and whether that is all of them (false while the index loads). match is
// asked once per distinct media type, with the store locked: it must not
// call the store.
func (s *Store) Entries(match func(mediaType string) bool) (entries []Entry, complete bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix := s.index
	verdict := make(map[uint32]bool)
	for id := slotID(1); id < ix.nextSlot; id++ {
		e := ix.at(id)
		if e.where != slotListed && e.where != slotHeaped {
			continue // free, or forgotten while pinned
		}
		ok, asked := verdict[e.media]
		if !asked {
			ok = match(ix.media.value(e.media))
			verdict[e.media] = ok
		}
		if !ok {
			continue
		}
		entries = append(entries, Entry{
			Info:    ix.info(e),
			Scopes:  scopeSetMembers(ix.scopes.value(e.scopes)),
			ModTime: time.Unix(0, e.modTime),
			Used:    time.Unix(0, e.used),
		})
	}
	return entries, !s.load.running
}

// TagRecord is a tag record as enumeration sees it.
type TagRecord struct {
	Key string
	Tag
	Used time.Time // last use
}

// TagRecords returns every tag record the store holds, and whether that
// is all of them (false while the index loads). Records whose content is
// not in memory are read from disk, without the store's lock; one that
// cannot be read (removed meanwhile, damaged) is left out.
func (s *Store) TagRecords() (records []TagRecord, complete bool) {
	type unread struct {
		name [32]byte
		used time.Time
	}
	var toRead []unread
	s.mu.Lock()
	for _, te := range s.tagIndex {
		if te.loaded {
			records = append(records, TagRecord{Key: te.key, Tag: te.tag, Used: te.used})
			continue
		}
		toRead = append(toRead, unread{te.name, te.used})
	}
	complete = !s.load.running
	s.mu.Unlock()
	for _, u := range toRead {
		key, t, err := s.readTagFile(u.name)
		if err != nil {
			continue
		}
		records = append(records, TagRecord{Key: key, Tag: t, Used: u.used})
	}
	return records, complete
}

// readTagFile reads the record named name, whatever its key, and checks
// that the key hashes to the name.
func (s *Store) readTagFile(name [32]byte) (string, Tag, error) {
	b, err := readLimited(s.tagFile(name))
	if err != nil {
		return "", Tag{}, err
	}
	var r tagRecord
	if err := strictUnmarshal(b, &r); err != nil {
		return "", Tag{}, err
	}
	if tagName(r.Key) != name {
		return "", Tag{}, errForeignRecord
	}
	t, err := parseTag(b, r.Key)
	return r.Key, t, err
}

// errForeignRecord: a tag file holds the record of a key that does not
// name it (copied or damaged by hand).
var errForeignRecord = errors.New("tag file holds the record of another key")

// readLimited reads a small metadata file, at most maxMetaFile+1 bytes
// (parseTag refuses more).
func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxMetaFile+1))
}

// Peek reads a committed entry of at most limit bytes (a manifest) without
// counting it as used: looking does not keep an entry from eviction. The
// error wraps ErrNotFound when d is not committed.
func (s *Store) Peek(d digest.Digest, limit int64) ([]byte, error) {
	b, err := s.open(d, false)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	if b.Size > limit {
		return nil, fmt.Errorf("blobcache: %s holds %d bytes, more than %d", d, b.Size, limit)
	}
	data := make([]byte, b.Size)
	if _, err := io.ReadFull(b.File, data); err != nil {
		return nil, fmt.Errorf("blobcache: reading %s: %w", d, err)
	}
	return data, nil
}
