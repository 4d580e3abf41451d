// Package blobcache is the content-addressed store for registry blobs and
// manifests: streaming fill, digest check, single-flight fan-out, atomic
// commit, LRU eviction, tag records.
//
// A Store may have a second, shared tier behind it (Options.Remote, an
// S3-compatible bucket for instance) that several instances behind one
// load balancer use together. The local store stays the serving tier: what
// it commits from an upstream it uploads in the background, and a fill may
// take its bytes from the remote instead of the upstream (Fill.StartRemote),
// verified as any fill is. See remote.go.
//
// Layout under Options.Dir:
//
//	blobs/<alg>/<hex[:2]>/<hex>       entry bytes (renamed into place only once verified)
//	blobs/<alg>/<hex[:2]>/<hex>.json  sidecar: digest, size, media type, access scopes
//	tmp/                              fills and sidecar writes in progress (emptied at Open)
//	tags/<h[:2]>/<h>.json             tag records, h = sha256 of the opaque tag key
//
// One Store owns a directory: two Stores on the same Dir in one process (or
// two processes) are not supported, because Open empties tmp/.
package blobcache

import (
	"container/list"
	"context"
	_ "crypto/sha256" // registers sha256 for go-digest
	_ "crypto/sha512" // registers sha384/sha512 for go-digest
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
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
	// atime: often enough that a restart keeps the LRU order approximately,
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
	// RetryAfter is how long Start and Put answer ErrUnavailable without
	// touching the disk after a disk error (default 30s).
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
}

// Info describes an entry.
type Info struct {
	Digest    digest.Digest
	Size      int64
	MediaType string
}

// entry is one committed digest in the index. All fields but info and
// modTime are guarded by Store.mu; info and modTime never change.
type entry struct {
	info    Info
	modTime time.Time // commit time, served as Last-Modified
	scopes  map[string]struct{}
	used    time.Time // recency, in memory
	touched time.Time // last time used was written to the file's atime
	pins    int       // open Blobs and Readers; a pinned entry is never removed
	elem    *list.Element
}

// Store is a content-addressed cache directory. It is safe for concurrent use.
type Store struct {
	opts     Options
	log      *zap.Logger
	blobsDir string
	tmpDir   string
	tagsDir  string

	mu      sync.Mutex
	closed  bool
	entries map[digest.Digest]*entry
	lru     *list.List // of *entry, front = most recently used
	total   int64      // bytes of committed data
	fills   map[digest.Digest]*Fill
	// Disk health: while now < unavailUntil, Start and Put fail fast.
	unavailUntil time.Time
	diskDown     bool   // a disk error was logged and no commit succeeded since
	diskCause    string // the condition last logged, so a lasting one is logged once

	// Tag records: indexed like entries, in a recency list of their own;
	// eviction takes whichever of the two lists' oldest was used longer ago.
	tagIndex map[string]*tagEntry // by file name
	tagLRU   *list.List           // of *tagEntry, front = most recently used
	tagTotal int64                // bytes counted for tag records

	wg sync.WaitGroup // fill goroutines

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
// of interrupted fills and builds the index from directory listings, file
// stats and sidecars; it never reads entry bytes, so it stays fast with big
// caches. Inconsistent entries (missing or mismatching sidecar) are removed;
// files it does not recognise are left alone.
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
		entries:   make(map[digest.Digest]*entry),
		lru:       list.New(),
		fills:     make(map[digest.Digest]*Fill),
		tagIndex:  make(map[string]*tagEntry),
		tagLRU:    list.New(),
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
	if err := s.load(); err != nil {
		return nil, err
	}
	if err := s.loadTags(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.evictLocked()
	n, tags, total := len(s.entries), len(s.tagIndex), s.total+s.tagTotal
	s.mu.Unlock()
	s.startUploads()
	s.log.Info("blob cache opened", zap.String("dir", opts.Dir), zap.Int("entries", n), zap.Int("tag_records", tags),
		zap.Int64("bytes", total), zap.Int64("max_size", opts.MaxSize))
	return s, nil
}

// cleanTmp removes whatever an interrupted run left in tmp/: nothing in there
// was ever committed.
func (s *Store) cleanTmp() error {
	des, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return fmt.Errorf("blobcache: %w", err)
	}
	for _, de := range des {
		if err := os.RemoveAll(filepath.Join(s.tmpDir, de.Name())); err != nil {
			s.log.Warn("cannot remove leftover temp file", zap.Error(err))
		}
	}
	return nil
}

// load builds the index from blobs/.
func (s *Store) load() error {
	algDirs, err := os.ReadDir(s.blobsDir)
	if err != nil {
		return fmt.Errorf("blobcache: %w", err)
	}
	var loaded []*entry
	for _, ad := range algDirs {
		alg := digest.Algorithm(ad.Name())
		if !ad.IsDir() || !alg.Available() {
			s.log.Debug("ignoring unknown file in cache", zap.String("name", ad.Name()))
			continue
		}
		prefixes, err := os.ReadDir(filepath.Join(s.blobsDir, ad.Name()))
		if err != nil {
			return fmt.Errorf("blobcache: %w", err)
		}
		for _, pd := range prefixes {
			if !pd.IsDir() || len(pd.Name()) != 2 || !isLowerHex(pd.Name()) {
				continue
			}
			dir := filepath.Join(s.blobsDir, ad.Name(), pd.Name())
			loaded = append(loaded, s.loadPrefix(alg, dir, pd.Name())...)
		}
	}
	// Oldest first, each pushed to the front: the most recent ends up in front.
	sort.Slice(loaded, func(i, j int) bool { return loaded[i].used.Before(loaded[j].used) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range loaded {
		e.elem = s.lru.PushFront(e)
		s.entries[e.info.Digest] = e
		s.total += e.info.Size
	}
	return nil
}

// loadPrefix indexes one blobs/<alg>/<xx>/ directory.
func (s *Store) loadPrefix(alg digest.Algorithm, dir, prefix string) []*entry {
	des, err := os.ReadDir(dir)
	if err != nil {
		s.log.Warn("cannot list cache directory", zap.String("dir", dir), zap.Error(err))
		return nil
	}
	valid := func(enc string) bool { return alg.Validate(enc) == nil && enc[:2] == prefix }
	metas := make(map[string]bool)
	var datas []fs.DirEntry
	for _, de := range des {
		name := de.Name()
		if enc, ok := strings.CutSuffix(name, ".json"); ok {
			if valid(enc) && de.Type().IsRegular() {
				metas[enc] = true
			}
			continue
		}
		if valid(name) && de.Type().IsRegular() {
			datas = append(datas, de)
		}
	}
	var out []*entry
	for _, de := range datas {
		enc := de.Name()
		d := digest.NewDigestFromEncoded(alg, enc)
		dataPath, metaPath := filepath.Join(dir, enc), filepath.Join(dir, enc+".json")
		hadMeta := metas[enc]
		delete(metas, enc)
		fi, err := de.Info()
		if err != nil {
			continue // raced with something removing it
		}
		var sc sidecar
		if hadMeta {
			b, err := os.ReadFile(metaPath)
			if err == nil {
				sc, err = parseSidecar(b, d)
			}
			if err == nil && sc.Size != fi.Size() {
				err = fmt.Errorf("size on disk %d, sidecar says %d", fi.Size(), sc.Size)
			}
			if err != nil {
				hadMeta = false
				s.log.Warn("removing cache entry with bad sidecar", zap.String("digest", d.String()), zap.Error(err))
			}
		}
		if !hadMeta {
			// A crash between sidecar and data rename, or damage: without a
			// trustworthy sidecar the entry's size and scopes are unknown.
			os.Remove(dataPath)
			os.Remove(metaPath)
			continue
		}
		used := fi.ModTime()
		if at := accessTime(fi); at.After(used) {
			used = at
		}
		e := &entry{
			info:    Info{Digest: d, Size: sc.Size, MediaType: sc.MediaType},
			modTime: fi.ModTime(),
			scopes:  make(map[string]struct{}, len(sc.Scopes)),
			used:    used,
			touched: used,
		}
		for _, sco := range sc.Scopes {
			e.scopes[sco] = struct{}{}
		}
		out = append(out, e)
	}
	// Sidecars left over have no data: a commit interrupted after the sidecar.
	for enc := range metas {
		os.Remove(filepath.Join(dir, enc+".json"))
	}
	return out
}

func isLowerHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// Close stops background work: fills in progress are abandoned (their temp
// files removed, their readers get ErrClosed), uploads to the remote get a
// few seconds to finish and the queued ones are dropped. Blobs already
// returned by Get stay readable until closed. Close waits for the fill and
// upload goroutines to end.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
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
	e := s.entries[d]
	if e == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrNotFound, d)
	}
	e.pins++
	now := time.Now()
	touch := false
	if used {
		e.used = now
		s.lru.MoveToFront(e.elem)
		touch = now.Sub(e.touched) >= touchInterval
		if touch {
			e.touched = now
		}
	}
	s.mu.Unlock()

	dataPath, metaPath := s.paths(d)
	f, err := os.Open(dataPath)
	if err != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		e.pins--
		if errors.Is(err, fs.ErrNotExist) && s.entries[d] == e {
			// Removed behind our back: forget it, it is a miss.
			s.forgetLocked(e)
			os.Remove(metaPath)
			return nil, fmt.Errorf("%w: %s", ErrNotFound, d)
		}
		if e.pins == 0 {
			s.evictLocked() // it may have been kept over MaxSize for us
		}
		return nil, fmt.Errorf("blobcache: %w", err)
	}
	if touch {
		// atime carries recency across restarts; mtime stays the commit time.
		_ = os.Chtimes(dataPath, now, e.modTime)
	}
	return &Blob{Info: e.info, ModTime: e.modTime, File: f, s: s, e: e}, nil
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
	return s.entries[d] != nil
}

// Stat returns the Info of a committed entry without opening or touching it.
func (s *Store) Stat(d digest.Digest) (Info, error) {
	if err := checkDigest(d); err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[d]; e != nil {
		return e.info, nil
	}
	return Info{}, fmt.Errorf("%w: %s", ErrNotFound, d)
}

// SetMaxSize changes the bound on committed data and tag records (0 =
// unbounded), as a config reload asks, and evicts down to it at once.
func (s *Store) SetMaxSize(n int64) {
	if n < 0 {
		n = 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.MaxSize = n
	s.evictLocked()
}

// Size returns the bytes counted against MaxSize: committed data and tag
// records.
func (s *Store) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total + s.tagTotal
}

func (s *Store) unpin(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.pins--
	if e.pins == 0 {
		s.evictLocked()
	}
}

// evictLocked removes the least recently used unpinned entries and tag
// records until they fit MaxSize. Pinned entries are skipped, so the store
// may stay above MaxSize until their readers close (unpin calls back here).
func (s *Store) evictLocked() {
	if s.opts.MaxSize <= 0 || s.closed {
		return
	}
	el := s.lru.Back()
	for s.total+s.tagTotal > s.opts.MaxSize {
		for el != nil && el.Value.(*entry).pins > 0 {
			el = el.Prev()
		}
		tel := s.tagLRU.Back()
		switch {
		case tel != nil && (el == nil || !el.Value.(*entry).used.Before(tel.Value.(*tagEntry).used)):
			s.removeTagLocked(tel.Value.(*tagEntry))
		case el != nil:
			prev := el.Prev()
			s.removeLocked(el.Value.(*entry))
			el = prev
		default:
			return // all pinned
		}
	}
}

// removeLocked deletes an entry from the index and the disk. Data goes
// first: a sidecar without data is cleaned at Open, and Get never sees the
// pair half gone because the index entry is already gone.
func (s *Store) removeLocked(e *entry) {
	s.forgetLocked(e)
	dataPath, metaPath := s.paths(e.info.Digest)
	if err := os.Remove(dataPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cannot remove evicted cache entry", zap.Error(err))
	}
	os.Remove(metaPath)
}

func (s *Store) forgetLocked(e *entry) {
	delete(s.entries, e.info.Digest)
	s.lru.Remove(e.elem)
	s.total -= e.info.Size
}

// remove deletes an unpinned entry (tests and benchmarks).
func (s *Store) remove(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[d]
	if e == nil || e.pins > 0 {
		return false
	}
	s.removeLocked(e)
	return true
}

// Put stores a small entry (a manifest) synchronously: it verifies that data
// hashes to d, writes it and commits it atomically. Errors wrap
// ErrDigestMismatch, ErrInvalidDigest or ErrUnavailable (disk trouble).
// Putting an entry that is already committed is a no-op (Allow adds
// scopes to it). A new entry is uploaded to the remote in the background,
// with scopes, which may read it from the start.
func (s *Store) Put(d digest.Digest, mediaType string, data []byte, scopes ...string) error {
	return s.put(d, mediaType, data, origin{upload: true, scopes: scopes})
}

// PutLocal is Put for an entry that stays with this store: it is never
// uploaded to the remote (what only this instance needs, such as the last
// answer of a list kept for when the upstream fails).
func (s *Store) PutLocal(d digest.Digest, mediaType string, data []byte) error {
	return s.put(d, mediaType, data, origin{})
}

// origin says where a committed entry's bytes came from: whether they go
// on to the remote, and the access scopes that came with them.
type origin struct {
	upload bool
	scopes []string
}

func (s *Store) put(d digest.Digest, mediaType string, data []byte, from origin) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		return fmt.Errorf("%w: got %s, want %s", ErrDigestMismatch, got, d)
	}
	if s.Contains(d) {
		return nil
	}
	if err := s.checkAvailable(); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.tmpDir, "put-*")
	if err != nil {
		s.diskError(err)
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	_, err = tmp.Write(data)
	if err == nil && !s.opts.NoSync {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		s.diskError(err)
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return s.commit(Info{Digest: d, Size: int64(len(data)), MediaType: mediaType}, tmp.Name(), nil, from)
}

// commit moves a verified temp file into place and indexes it; for a fill it
// also ends the fill as committed, in the same critical section so that Join
// never sees neither the fill nor the entry. If the fill ended meanwhile
// (abandoned, store closed) nothing is committed. A new entry whose origin
// says so is queued for upload to the remote.
func (s *Store) commit(info Info, tmpPath string, f *Fill, from origin) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed && (f == nil || !f.isFinishing()) {
		os.Remove(tmpPath)
		return ErrClosed
	}
	if f != nil {
		f.mu.Lock()
		ended, ferr := f.state == stateDone, f.err
		f.mu.Unlock()
		if ended {
			os.Remove(tmpPath)
			return ferr
		}
	}
	d := info.Digest
	if s.opts.MaxSize > 0 && info.Size > s.opts.MaxSize {
		s.notKeptLocked(info, tmpPath, f)
		s.log.Debug("entry larger than max_size not kept", zap.String("digest", d.String()), zap.Int64("size", info.Size))
		return nil
	}
	e := s.entries[d]
	if e != nil {
		// Committed meanwhile by another path (Put racing a fill); the bytes
		// are identical, so keep the existing file and merge scopes.
		os.Remove(tmpPath)
		added := false
		for _, sc := range from.scopes {
			if _, ok := e.scopes[sc]; !ok {
				e.scopes[sc] = struct{}{}
				added = true
			}
		}
		if f != nil {
			for sc := range f.scopes {
				if _, ok := e.scopes[sc]; !ok {
					e.scopes[sc] = struct{}{}
					added = true
				}
			}
		}
		if added {
			if err := s.writeSidecarLocked(e); err != nil {
				s.log.Warn("cannot update cache sidecar", zap.Error(err))
			}
		}
	} else {
		e = &entry{info: info, scopes: make(map[string]struct{})}
		for _, sc := range from.scopes {
			e.scopes[sc] = struct{}{}
		}
		if f != nil {
			for sc := range f.scopes {
				e.scopes[sc] = struct{}{}
			}
		}
		dataPath, _ := s.paths(d)
		err := os.MkdirAll(filepath.Dir(dataPath), 0o755)
		if err == nil {
			// Sidecar first: a crash between the renames leaves a sidecar
			// without data, which Open removes; never data without metadata.
			err = s.writeSidecarLocked(e)
		}
		if err == nil {
			err = os.Rename(tmpPath, dataPath)
		}
		if err != nil {
			s.diskErrorLocked(err)
			s.notKeptLocked(info, tmpPath, f)
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		now := time.Now()
		e.modTime, e.used, e.touched = now, now, now
		if fi, err := os.Stat(dataPath); err == nil {
			e.modTime = fi.ModTime()
		}
		e.elem = s.lru.PushFront(e)
		s.entries[d] = e
		s.total += info.Size
		if s.diskDown {
			s.diskDown = false
			s.log.Info("blob cache disk usable again")
		}
		if from.upload {
			s.queueUpload(uploadJob{digest: d})
		}
	}
	s.lru.MoveToFront(e.elem)
	if f != nil {
		f.endCommittedLocked(e, info.Size)
	}
	s.evictLocked()
	return nil
}

// notKeptLocked drops verified bytes the store cannot keep (bigger than
// MaxSize, or the disk failed at commit): a fill's readers still get every
// byte and a clean end, from descriptors that keep the unlinked file
// readable.
func (s *Store) notKeptLocked(info Info, tmpPath string, f *Fill) {
	os.Remove(tmpPath)
	if f != nil {
		f.endCommittedLocked(nil, info.Size)
	}
}

// endVerifiedNotKept ends a verified fill without keeping its bytes, when
// the disk failed before the commit (fsync).
func (s *Store) endVerifiedNotKept(info Info, tmpPath string, f *Fill) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f.mu.Lock()
	ended := f.state == stateDone
	f.mu.Unlock()
	if ended {
		os.Remove(tmpPath)
		return
	}
	s.notKeptLocked(info, tmpPath, f)
}

// writeSidecarLocked atomically replaces the sidecar of e. Called with s.mu
// held so that concurrent scope updates of one entry cannot lose each other.
func (s *Store) writeSidecarLocked(e *entry) error {
	_, metaPath := s.paths(e.info.Digest)
	b, err := encodeSidecar(e.info, e.scopes)
	if err != nil {
		return err
	}
	return s.writeFileAtomic(metaPath, b)
}

// writeFileAtomic writes a small file via tmp/ and a rename, so readers see
// the old or the new content, never a torn one. No fsync: losing a sidecar
// or tag update in a power loss only costs a cache miss or a revalidation.
func (s *Store) writeFileAtomic(path string, b []byte) error {
	tmp, err := s.writeTemp(b)
	if err != nil {
		return err
	}
	return place(tmp, path)
}

// writeTemp writes b to a new file in tmp/ and returns its path.
func (s *Store) writeTemp(b []byte) (string, error) {
	tmp, err := os.CreateTemp(s.tmpDir, "meta-*")
	if err != nil {
		return "", err
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// place renames the temp file tmp to path, creating path's directory; on
// failure tmp is removed.
func place(tmp, path string) error {
	err := os.MkdirAll(filepath.Dir(path), 0o755)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

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

// checkAvailable fails fast while a recent disk error lasts, so callers go
// pass-through instead of hitting a full or broken disk on every request.
func (s *Store) checkAvailable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("%w: %w", ErrUnavailable, ErrClosed)
	}
	if time.Now().Before(s.unavailUntil) {
		return fmt.Errorf("%w: recent disk error: %s", ErrUnavailable, s.diskCause)
	}
	return nil
}

// makeRoom checks, before a fill of size bytes starts, that the file
// system has room for it beside the fills already running, evicting least
// recently used entries to make some if need be. A disk that fills up
// mid-fill still works (readers fetch the rest from the upstream), but
// knowing beforehand costs the upstream nothing.
func (s *Store) makeRoom(size int64) error {
	free, err := s.freeSpace()
	if err != nil {
		return nil // cannot tell: let the writes tell
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	need := size + minFreeSpace
	for _, f := range s.fills {
		f.mu.Lock()
		if f.state == stateRunning && f.size > f.written {
			need += f.size - f.written
		}
		f.mu.Unlock()
	}
	if free >= need {
		return nil
	}
	// Evict only if that makes enough room: least recently used first.
	var victims []*entry
	gain := free
	for el := s.lru.Back(); gain < need && el != nil; el = el.Prev() {
		if e := el.Value.(*entry); e.pins == 0 {
			victims = append(victims, e)
			gain += e.info.Size
		}
	}
	if gain >= need {
		for _, e := range victims {
			s.removeLocked(e)
		}
		return nil
	}
	err = fmt.Errorf("no room on the cache's file system for %d bytes (%d available, %d needed with the fills in progress and a reserve of %d)",
		size, free, need, int64(minFreeSpace))
	s.logDiskConditionLocked("no room", err)
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func (s *Store) diskError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.diskErrorLocked(err)
}

// diskErrorLocked opens the fail-fast window and logs the condition once:
// again only if it changes or the disk worked in between.
func (s *Store) diskErrorLocked(err error) {
	s.unavailUntil = time.Now().Add(s.opts.RetryAfter)
	cause := err.Error()
	var errno syscall.Errno
	if errors.As(err, &errno) {
		cause = errno.Error() // drop the (random temp) path from the key
	}
	s.logDiskConditionLocked(cause, err)
}

// logDiskConditionLocked logs a disk condition (named by cause) once: again
// only if it changes or the disk worked in between.
func (s *Store) logDiskConditionLocked(cause string, err error) {
	if !s.diskDown || cause != s.diskCause {
		s.log.Warn("blob cache disk error; requests pass through while it lasts",
			zap.String("dir", s.opts.Dir), zap.Error(err), zap.Duration("retry_after", s.opts.RetryAfter))
	}
	s.diskDown = true
	s.diskCause = cause
}
