package blobcache

import (
	"container/list"
	"context"
	_ "crypto/sha256" // registers sha256 for go-digest
	_ "crypto/sha512" // registers sha384/sha512 for go-digest
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
)

// Errors returned by the store; match them with errors.Is.
var (
	// ErrNotFound: the digest is not committed in the store.
	ErrNotFound = errors.New("blobcache: not found")
	// ErrDigestMismatch: the bytes do not hash to the digest, or their count is wrong.
	ErrDigestMismatch = errors.New("blobcache: content does not match digest")
	// ErrUnavailable: the cache cannot store anything now (disk error, store
	// closed); the caller should pass the upstream response through uncached.
	ErrUnavailable = errors.New("blobcache: cache unavailable")
	// ErrFillFailed: the fill this caller joined did not produce a committed
	// entry; the caller should make its own upstream request.
	ErrFillFailed = errors.New("blobcache: fill failed")
	// ErrAbandoned: a fill was stopped because nobody read it for Options.Linger.
	ErrAbandoned = errors.New("blobcache: fill abandoned with no reader left")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("blobcache: store closed")
	// ErrInvalidDigest: the digest is malformed or of an unsupported algorithm.
	ErrInvalidDigest = errors.New("blobcache: invalid digest")
)

const (
	defaultLinger        = time.Minute
	defaultLeaderTimeout = time.Minute
	defaultRetryAfter    = 30 * time.Second
	defaultStallTimeout  = time.Minute
	// minFreeSpace is what a fill leaves free on the cache's file system,
	// for the sidecars, tag records and whatever else lives there.
	minFreeSpace = 64 << 20
	// touchInterval bounds how often Get writes recency back to the file's
	// atime: often enough that the LRU order survives a restart approximately,
	// rarely enough that hot entries cost no extra syscall per hit.
	touchInterval = time.Minute
)

// Options configures a Store.
type Options struct {
	Dir     string        // created if missing
	MaxSize int64         // bytes of committed data and tag records on disk; 0 = unbounded; LRU eviction beyond it
	Linger  time.Duration // how long a fill goes on with no reader left (default 1m); after that it is abandoned and cleaned
	Logger  *zap.Logger   // may be nil

	// LeaderTimeout bounds the time between Join (leader) and Start or Fail
	// (default 1m). A leader that lets it pass is presumed gone: the fill
	// fails so followers fall back and the digest can get a new leader,
	// instead of staying stuck behind a fill that will never start.
	LeaderTimeout time.Duration
	// RetryAfter is how long, after a disk error, fills and Put answer
	// ErrUnavailable without touching the disk; and how long, after a
	// failure of the remote, the remote is not asked (default 30s).
	RetryAfter time.Duration
	// StallTimeout bounds how long a fill waits for the next bytes of its
	// upstream body (default 1m); then the fill fails, so its readers are
	// not held by an upstream that stopped sending without closing.
	StallTimeout time.Duration
	// NoSync skips the fsync of entry data before its commit rename. Faster,
	// but after a power loss an entry may hold bytes that do not match its
	// digest. Meant for tests and benchmarks.
	NoSync bool
	// Remote is the shared tier behind the store (nil: none). It can be
	// changed later with SetRemote.
	Remote Remote
	// LoadGate, if set, holds the background loader until it is closed
	// (or the store is): the store serves with its index still loading.
	// For tests of what the load changes.
	LoadGate <-chan struct{}
}

// Info describes an entry.
type Info struct {
	Digest    digest.Digest
	Size      int64
	MediaType string
}

// Store is a content-addressed cache directory. It is safe for concurrent use.
type Store struct {
	opts     Options
	log      *zap.Logger
	blobsDir string
	tmpDir   string
	tagsDir  string

	mu     sync.Mutex
	closed bool
	index  *index
	total  int64 // bytes of committed data
	fills  map[digest.Digest]*Fill
	// load is the background loader's state: while it runs, a lookup
	// that the index misses looks on disk (see load.go).
	load loadState
	// disk: while it rests after an error, Start and Put fail fast; it
	// works again when a commit succeeds.
	disk health

	// Tag records: indexed like entries, in a recency list of their own;
	// eviction takes whichever of the two lists' oldest was used longer ago.
	tagIndex map[[32]byte]*tagEntry // by the hash that names the file
	tagLRU   *list.List             // of *tagEntry, front = most recently used
	tagTotal int64                  // bytes counted for tag records
	tagHot   *list.List             // of *tagEntry whose content is held, front = most recently used
	hotTags  int                    // how many records hold their content (maxHotTags; tests lower it)

	wg     sync.WaitGroup // fill goroutines
	loadWG sync.WaitGroup // the background loader

	// counters are what Stats reports beside the state (stats.go).
	counters counters

	remote  remoteState // the shared tier, its health and what it holds wrong
	uploads *uploads    // entries and tag records on their way to the remote

	// writeData writes fill bytes to the temp file; tests replace it to
	// simulate a disk that fills up mid-fill.
	writeData func(f *os.File, p []byte) (int, error)
	// freeSpace reports the bytes available to the cache on its file
	// system; tests replace it to simulate a small disk.
	freeSpace func() (int64, error)
}

// Open opens (or creates) the cache in opts.Dir. It removes the temp files
// of interrupted fills and returns; the index is built in the background
// from directory listings, file stats and sidecars (never entry bytes),
// while the store already serves: until it is complete, an entry the index
// does not hold yet is looked up on disk (see load.go). Inconsistent
// entries (missing or mismatching sidecar) are removed; files it does not
// recognise are left alone.
func Open(opts Options) (*Store, error) {
	if opts.Dir == "" {
		return nil, errors.New("blobcache: Options.Dir is empty")
	}
	if opts.Linger <= 0 {
		opts.Linger = defaultLinger
	}
	if opts.LeaderTimeout <= 0 {
		opts.LeaderTimeout = defaultLeaderTimeout
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = defaultRetryAfter
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = defaultStallTimeout
	}
	if opts.MaxSize < 0 {
		opts.MaxSize = 0
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Store{
		opts:      opts,
		log:       log,
		blobsDir:  filepath.Join(opts.Dir, "blobs"),
		tmpDir:    filepath.Join(opts.Dir, "tmp"),
		tagsDir:   filepath.Join(opts.Dir, "tags"),
		index:     newIndex(),
		fills:     make(map[digest.Digest]*Fill),
		tagIndex:  make(map[[32]byte]*tagEntry),
		tagLRU:    list.New(),
		tagHot:    list.New(),
		hotTags:   maxHotTags,
		writeData: (*os.File).Write,
	}
	s.freeSpace = func() (int64, error) { return availableBytes(s.opts.Dir) }
	s.remote.r = opts.Remote
	for _, d := range []string{opts.Dir, s.blobsDir, s.tmpDir, s.tagsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("blobcache: %w", err)
		}
	}
	if err := s.cleanTmp(); err != nil {
		return nil, err
	}
	s.startLoad()
	s.startUploads()
	s.log.Info("blob cache opened; its index loads in the background", zap.String("dir", opts.Dir), zap.Int64("max_size", opts.MaxSize))
	return s, nil
}

// Close stops background work: fills in progress are abandoned (their temp
// files removed, their readers get ErrClosed), uploads to the remote get a
// few seconds to finish and the queued ones are dropped, the index loader
// stops after the directory it is reading. Blobs already returned by Get
// stay readable until closed. Close waits for the fill, loader and upload
// goroutines to end.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.load.stopLocked()
	fills := make([]*Fill, 0, len(s.fills))
	for _, f := range s.fills {
		fills = append(fills, f)
	}
	s.mu.Unlock()
	for _, f := range fills {
		// A fill whose bytes are all verified and flushed is committed
		// in a moment (its client may have every byte already): let it.
		f.fail(fmt.Errorf("%w: %w", ErrFillFailed, ErrClosed), func() bool { return !f.finishing })
	}
	s.wg.Wait()
	s.loadWG.Wait()
	s.stopUploads()
	return nil
}

// checkDigest refuses anything that is not a valid digest of an available
// algorithm; only then may a path be built from it (hex only, no separators).
func checkDigest(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("%w: %q: %v", ErrInvalidDigest, string(d), err)
	}
	return nil
}

// paths returns the data and sidecar paths of a validated digest.
func (s *Store) paths(d digest.Digest) (data, meta string) {
	enc := d.Encoded()
	dir := filepath.Join(s.blobsDir, string(d.Algorithm()), enc[:2])
	return filepath.Join(dir, enc), filepath.Join(dir, enc+".json")
}

// Blob is an open committed entry. Serve File with http.ServeContent so that
// the kernel can sendfile it; the entry is pinned (never evicted or removed)
// until Close.
type Blob struct {
	Info
	ModTime time.Time // commit time
	File    *os.File

	s    *Store
	e    *entry
	once sync.Once
}

// Close closes the file and unpins the entry.
func (b *Blob) Close() error {
	var err error
	b.once.Do(func() {
		err = b.File.Close()
		b.s.unpin(b.e)
	})
	return err
}

// openGapHook, when set (tests), runs in open between the entry's lookup
// and the opening of its file, where a Remove may come.
var openGapHook func(d digest.Digest)

// Get opens a committed entry. It returns an error wrapping ErrNotFound on a
// miss and ErrInvalidDigest for a malformed digest. It updates recency.
//
// Intended call order for a request: Get; on ErrNotFound, Join.
func (s *Store) Get(d digest.Digest) (*Blob, error) {
	return s.open(d, true)
}

// open opens a committed entry, pinned; used says whether this counts as a
// use for the LRU order (an upload reading the entry does not).
func (s *Store) open(d digest.Digest, used bool) (*Blob, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	e := s.lookupLocked(d)
	if e == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrNotFound, d)
	}
	e.pins++
	now := time.Now()
	touch := false
	if used {
		e.used = now.UnixNano()
		s.index.touch(e)
		touch = now.Unix()-int64(e.touched) >= int64(touchInterval/time.Second)
		if touch {
			e.touched = unixSeconds(now)
		}
	}
	info, modTime := s.index.info(e), time.Unix(0, e.modTime)
	s.mu.Unlock()

	if openGapHook != nil {
		openGapHook(d)
	}
	dataPath, metaPath := s.paths(d)
	f, err := os.Open(dataPath)
	if err != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		e.pins--
		if errors.Is(err, fs.ErrNotExist) && s.index.find(d) == e {
			// Removed behind our back: forget it, it is a miss.
			s.forgetLocked(e)
			os.Remove(metaPath)
			return nil, fmt.Errorf("%w: %s", ErrNotFound, d)
		}
		if errors.Is(err, fs.ErrNotExist) && e.where == slotDead {
			// Removed (Remove) between the lookup and the open: a miss.
			s.index.release(e)
			return nil, fmt.Errorf("%w: %s", ErrNotFound, d)
		}
		if e.pins == 0 {
			s.index.release(e)
			s.evictLocked() // our pin may have held the store over MaxSize
		}
		return nil, fmt.Errorf("blobcache: %w", err)
	}
	if touch {
		// atime carries recency across restarts; mtime stays the commit time.
		_ = os.Chtimes(dataPath, now, modTime)
	}
	return &Blob{Info: info, ModTime: modTime, File: f, s: s, e: e}, nil
}

// AwaitCommit waits, if d's fill has all its bytes verified and is only
// being committed (its last byte and a rename: milliseconds), for that
// commit, and reports whether d is committed now. With no such fill it
// returns at once. A request that comes just after a client got the whole
// blob thus finds it a hit, as it would a moment later.
func (s *Store) AwaitCommit(ctx context.Context, d digest.Digest) bool {
	if checkDigest(d) != nil {
		return false
	}
	s.mu.Lock()
	f := s.fills[d]
	s.mu.Unlock()
	if f == nil {
		return false
	}
	f.mu.Lock()
	finishing := f.finishing && f.state == stateRunning
	f.mu.Unlock()
	if !finishing {
		return false
	}
	select {
	case <-f.ended:
	case <-ctx.Done():
		return false
	}
	return s.Contains(d)
}

// Contains reports whether d is committed, without opening or touching it.
func (s *Store) Contains(d digest.Digest) bool {
	if checkDigest(d) != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lookupLocked(d) != nil
}

// Stat returns the Info of a committed entry without opening or touching it.
func (s *Store) Stat(d digest.Digest) (Info, error) {
	if err := checkDigest(d); err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.lookupLocked(d); e != nil {
		return s.index.info(e), nil
	}
	return Info{}, fmt.Errorf("%w: %s", ErrNotFound, d)
}
