package blobcache

import (
	"context"
	"encoding"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

// copyBufSize is the chunk of one upstream read and one temp file write.
// Readers are woken once per chunk, so it also sets the wakeup rate.
const copyBufSize = 128 << 10

// writebackChunk is how many written bytes a fill lets accumulate before
// it asks the kernel to start writing them to disk (see startWriteback).
const writebackChunk = 8 << 20

// copyBufs bounds fill memory: one buffer per running fill, whatever the
// blob size and number of readers (readers read into their callers' buffers).
// Its first byte is room for the byte a fill holds back between reads.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1+copyBufSize); return &b }}

// Errors of a fill whose upstream body failed it, besides
// ErrDigestMismatch (wrong bytes, or more than announced); match them with
// errors.Is.
var (
	// ErrShortBody: the upstream body ended before its announced size
	// (a connection cut mid-blob).
	ErrShortBody = errors.New("blobcache: upstream body ended early")
	// ErrStalled: the upstream sent nothing for Options.StallTimeout.
	ErrStalled = errors.New("blobcache: upstream stalled")
)

// Source is the upstream response a leader hands to Start.
type Source struct {
	Body      io.ReadCloser // closed by the fill; Close may come concurrently with Read (to abort it)
	Size      int64         // Content-Length, -1 if unknown
	MediaType string
	// OnFailure, if set, is called once, from the fill's own goroutine,
	// when the upstream body fails the fill: wrong bytes
	// (ErrDigestMismatch), too few (ErrShortBody), none for too long
	// (ErrStalled), or a read error. Not when the fill ends for another
	// reason (abandoned, store closed, disk error): those say nothing
	// about the upstream. Every reader sees the failure; this reports it
	// once, for the caller's log and metrics.
	OnFailure func(error)
}

type fillState int

const (
	stateWaiting fillState = iota // joined, leader has not Started or Failed yet
	stateRunning                  // bytes are being copied
	stateDone                     // committed or failed; see Fill.err
)

// Fill is one upstream fetch of a digest that any number of readers stream
// from while it is written. Get one with Store.Join.
type Fill struct {
	s       *Store
	d       digest.Digest
	started chan struct{} // closed when the state leaves stateWaiting
	ended   chan struct{} // closed when the state becomes stateDone

	scopes map[string]struct{} // guarded by s.mu (Allow during the fill)

	// fromRemote: the bytes come from Options.Remote (StartRemote), so
	// they are not uploaded back, and bad ones mark the remote's copy.
	// Set before the copy goroutine starts, never changed after.
	fromRemote bool
	// onFailure is Source.OnFailure; set with fromRemote.
	onFailure func(error)

	mu        sync.Mutex // lock order: s.mu before mu
	cond      sync.Cond  // on mu; broadcast on every write and state change
	state     fillState
	err       error // why the fill failed; wraps ErrFillFailed
	committed bool  // bytes verified (and stored, unless too big for the cache)
	finishing bool  // bytes verified and flushed: the last byte and the commit follow at once
	entry     *entry
	size      int64 // -1 while unknown
	mediaType string
	body      io.ReadCloser
	file      *os.File // shared by readers through ReadAt; nil once nobody uses it
	fileRefs  int      // the copy goroutine + open readers on file
	tmpPath   string   // "" once renamed or removed
	written   int64
	readers   int // open Readers attached to file
	lingerGen int // invalidates linger timers that lost a race
	linger    *time.Timer
	leader    *time.Timer
}

// Join returns the fill for d. Exactly one caller per digest at a time gets
// leader=true and must then call Start or Fail; the others get the same fill
// and call Reader.
//
// Intended call order: Get (a hit needs no fill), then Join. If d was
// committed between the two, Join returns a finished fill whose Reader reads
// the committed entry (leader=false). For an invalid digest or a closed
// store Join returns a failed fill (leader=false) whose Reader returns the
// error, so the caller falls back to its own upstream request.
func (s *Store) Join(d digest.Digest) (f *Fill, leader bool) {
	if err := checkDigest(d); err != nil {
		return s.endedFill(d, fmt.Errorf("%w: %w", ErrFillFailed, err)), false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return s.endedFill(d, fmt.Errorf("%w: %w", ErrFillFailed, ErrClosed)), false
	}
	if f := s.fills[d]; f != nil {
		return f, false
	}
	if s.entries[d] != nil {
		f := s.endedFill(d, nil)
		f.committed = true
		return f, false
	}
	f = &Fill{s: s, d: d, started: make(chan struct{}), ended: make(chan struct{}), size: -1}
	f.cond.L = &f.mu
	f.leader = time.AfterFunc(s.opts.LeaderTimeout, func() {
		f.fail(fmt.Errorf("%w: leader neither started nor failed within %v", ErrFillFailed, s.opts.LeaderTimeout),
			func() bool { return f.state == stateWaiting })
	})
	s.fills[d] = f
	return f, true
}

func (s *Store) endedFill(d digest.Digest, err error) *Fill {
	f := &Fill{s: s, d: d, started: make(chan struct{}), ended: make(chan struct{}), state: stateDone, err: err, size: -1}
	f.cond.L = &f.mu
	close(f.started)
	close(f.ended)
	return f
}

func (f *Fill) isFinishing() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.finishing
}

// Digest returns the digest being filled.
func (f *Fill) Digest() digest.Digest { return f.d }

// Start (leader only, after a 200 from upstream) creates the temp file and
// copies src.Body into it in a background goroutine that is detached from
// the leader's request: it goes on while any reader is open and for
// Options.Linger after the last one closed.
//
// Any error means src.Body was NOT read (nor closed) and the fill failed for
// followers: the leader should stream src.Body to its client directly. The
// error wraps ErrUnavailable (disk unwritable or full, store closed, or the
// fill already ended, e.g. after LeaderTimeout).
func (f *Fill) Start(src Source) error {
	_, err := f.start(src, false, nil)
	return err
}

// StartReading is Start for a leader that also reads the fill: its Reader
// is attached before the copy begins, so it streams whatever arrives and
// sees the fill's end as any reader does, however soon the upstream fails.
func (f *Fill) StartReading(ctx context.Context, src Source) (*Reader, error) {
	return f.start(src, false, ctx)
}

// start starts the copy; with a leader context it also returns the
// leader's Reader, attached before the copy begins.
func (f *Fill) start(src Source, fromRemote bool, leader context.Context) (*Reader, error) {
	s := f.s
	err := s.checkAvailable()
	if err == nil && src.Size > 0 {
		err = s.makeRoom(src.Size)
	}
	if err != nil {
		f.fail(fmt.Errorf("%w: %w", ErrFillFailed, err), func() bool { return f.state == stateWaiting })
		return nil, err
	}
	file, err := os.CreateTemp(s.tmpDir, "fill-*")
	if err != nil {
		s.diskError(err)
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		f.fail(fmt.Errorf("%w: %w", ErrFillFailed, err), func() bool { return f.state == stateWaiting })
		return nil, err
	}
	f.mu.Lock()
	if f.state != stateWaiting {
		ferr := f.err
		f.mu.Unlock()
		file.Close()
		os.Remove(file.Name())
		if ferr == nil {
			ferr = errors.New("fill already started")
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, ferr)
	}
	f.leader.Stop()
	f.fromRemote = fromRemote
	f.onFailure = src.OnFailure
	size := src.Size
	if size < 0 {
		size = -1
	}
	f.state = stateRunning
	f.size = size
	f.mediaType = src.MediaType
	f.body = &onceCloser{ReadCloser: src.Body}
	f.file = file
	f.fileRefs = 1 // the copy goroutine's
	f.tmpPath = file.Name()
	var r *Reader
	if leader != nil {
		r = f.attachLocked(leader)
	}
	if f.readers == 0 {
		f.armLingerLocked()
	}
	// Added while the fill is still in s.fills and running: Store.Close
	// fails it (under f.mu, after us) before waiting, so Add precedes Wait.
	s.wg.Add(1)
	body := f.body
	close(f.started)
	f.cond.Broadcast()
	f.mu.Unlock()
	go f.run(body, file, size)
	return r, nil
}

// Fail (leader only) reports that upstream did not give the bytes (401, 404,
// network error). Followers' Reader calls return an error wrapping
// ErrFillFailed and err; the next Join makes a new leader. After Start, Fail
// is a no-op, so a leader may `defer f.Fail(...)` as a safety net.
func (f *Fill) Fail(err error) {
	if err == nil {
		err = errors.New("leader failed")
	}
	f.fail(fmt.Errorf("%w: %w", ErrFillFailed, err), func() bool { return f.state == stateWaiting })
}

// fail ends the fill with err (which wraps ErrFillFailed), if it has not
// ended and cond (called with f.mu held; nil = always) agrees. Readers wake
// and return err, the temp file goes, upstream is closed, and the digest is
// free for a new leader. State only ever becomes done with s.mu held, which
// orders fail against commit.
func (f *Fill) fail(err error, cond func() bool) bool {
	s := f.s
	s.mu.Lock()
	f.mu.Lock()
	if f.state == stateDone || (cond != nil && !cond()) {
		f.mu.Unlock()
		s.mu.Unlock()
		return false
	}
	if s.fills[f.d] == f {
		delete(s.fills, f.d)
	}
	if f.state == stateWaiting {
		close(f.started)
	}
	f.state = stateDone
	close(f.ended)
	f.err = err
	f.stopTimersLocked()
	body, tmp := f.body, f.tmpPath
	f.tmpPath = ""
	if tmp != "" {
		// Before readers wake: whoever sees the failure sees no temp
		// file either. Open descriptors stay valid.
		os.Remove(tmp)
	}
	f.cond.Broadcast()
	f.mu.Unlock()
	s.mu.Unlock()
	if body != nil {
		body.Close() // unblocks the copy goroutine's Read
	}
	return true
}

// endCommittedLocked ends the fill as committed (s.mu held). e is nil when
// the entry was verified but not kept (bigger than MaxSize). Readers still
// open pin the entry from now on, as a Blob would.
func (f *Fill) endCommittedLocked(e *entry, size int64) {
	s := f.s
	if s.fills[f.d] == f {
		delete(s.fills, f.d)
	}
	f.mu.Lock()
	f.state = stateDone
	close(f.ended)
	f.committed = true
	f.entry = e
	f.size = size
	f.tmpPath = ""
	if e != nil {
		e.pins += f.readers
	}
	f.stopTimersLocked()
	f.cond.Broadcast()
	f.mu.Unlock()
}

func (f *Fill) stopTimersLocked() {
	if f.leader != nil {
		f.leader.Stop()
	}
	f.lingerGen++
	if f.linger != nil {
		f.linger.Stop()
	}
}

// armLingerLocked starts the countdown after which a fill nobody reads is
// abandoned. The generation check makes a timer that fired while a reader
// was attaching harmless.
func (f *Fill) armLingerLocked() {
	f.lingerGen++
	gen := f.lingerGen
	if f.linger != nil {
		f.linger.Stop()
	}
	f.linger = time.AfterFunc(f.s.opts.Linger, func() {
		f.fail(fmt.Errorf("%w: %w", ErrFillFailed, ErrAbandoned), func() bool {
			return f.state == stateRunning && f.readers == 0 && f.lingerGen == gen
		})
	})
}

// run is the copy goroutine: upstream -> temp file, hashing as bytes pass.
func (f *Fill) run(body io.ReadCloser, file *os.File, size int64) {
	s := f.s
	defer s.wg.Done()
	defer f.releaseFile()
	v, err := f.copy(body, file, size)
	body.Close()
	if err != nil {
		if f.fromRemote && errors.Is(err, ErrDigestMismatch) {
			s.remoteCopyBad(f.d, err)
		}
		var u *Unfinished
		diskErr := errors.As(err, &u)
		if !diskErr {
			err = fmt.Errorf("%w: %w", ErrFillFailed, err)
		}
		// fail is false when the fill had already ended (abandoned, store
		// closed): then the read error is only the echo of that.
		if f.fail(err, nil) && !diskErr && f.onFailure != nil {
			f.onFailure(err)
		}
		return
	}
	// The bytes are verified: from here on a disk error costs the entry,
	// never the readers, who get every byte and a clean end.
	keep := true
	if !s.opts.NoSync {
		// Before the rename: a committed entry must survive a power loss
		// with the bytes its name promises. Before the last byte too:
		// the few milliseconds from that byte to the commit are all that
		// requests arriving then wait for (see Store.AwaitCommit).
		if err := file.Sync(); err != nil {
			s.diskError(err)
			keep = false
		}
	}
	f.mu.Lock()
	f.finishing = true
	f.mu.Unlock()
	sync := keep && !s.opts.NoSync
	n, flushed, err := v.writeLast(sync)
	if err != nil {
		f.fail(err, nil)
		return
	}
	if sync && !flushed {
		keep = false
	}
	f.mu.Lock()
	tmp, mt := f.tmpPath, f.mediaType
	f.mu.Unlock()
	if tmp == "" { // failed meanwhile
		return
	}
	info := Info{Digest: f.d, Size: n, MediaType: mt}
	if !keep {
		s.endVerifiedNotKept(info, tmp, f)
		return
	}
	// Bytes that came from the remote are there already.
	if err := s.commit(info, tmp, f, origin{upload: !f.fromRemote}); err != nil && !errors.Is(err, ErrUnavailable) {
		f.fail(fmt.Errorf("%w: %w", ErrFillFailed, err), nil)
	}
}

// copy moves bytes and publishes progress. Once size and digest are
// verified it returns the file's writer, holding the blob's last byte,
// which fillWriter.writeLast puts into the file.
//
// The file never holds a complete blob before its bytes are verified (and
// flushed, see run), so a reader may send whatever the file holds (with
// sendfile) and still never end a response cleanly on bad bytes. Since the
// size may be unknown, the last byte of every read waits in the buffer
// until more comes or the body ends.
func (f *Fill) copy(body io.Reader, file *os.File, size int64) (*fillWriter, error) {
	s := f.s
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	// buf[0] is where the byte held back from the previous read goes, so
	// that it is written together with the next one.
	buf := *bp
	v := &fillWriter{f: f, file: file, hash: f.d.Algorithm().Hash()}
	var held byte
	holding := false
	// An upstream that stops sending without closing the connection
	// would hold the fill, and every reader on it, forever.
	var stalled atomic.Bool
	watchdog := time.AfterFunc(s.opts.StallTimeout, func() {
		stalled.Store(true)
		f.body.Close()
	})
	defer watchdog.Stop()
	for {
		n, rerr := body.Read(buf[1:])
		if n > 0 {
			watchdog.Reset(s.opts.StallTimeout)
			received := v.written + int64(n)
			if holding {
				received++
			}
			if size >= 0 && received > size {
				return nil, fmt.Errorf("%w: upstream sent more than the announced %d bytes", ErrDigestMismatch, size)
			}
			start := 1
			if holding {
				buf[0], start = held, 0
			}
			held, holding = buf[n], true
			if out := buf[start:n]; len(out) > 0 {
				if err := v.write(out); err != nil {
					return nil, err
				}
				if err := v.publish(); err != nil {
					return nil, err
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			f.mu.Lock()
			ferr := f.err
			f.mu.Unlock()
			if ferr != nil { // we were aborted: report why, not "read on closed body"
				return nil, ferr
			}
			if stalled.Load() {
				return nil, fmt.Errorf("%w: nothing for %v after %d bytes", ErrStalled, s.opts.StallTimeout, v.written)
			}
			if errors.Is(rerr, io.ErrUnexpectedEOF) {
				// The transport's word for a body that ended before its
				// Content-Length or its chunked coding's end.
				return nil, fmt.Errorf("%w after %d bytes: %w", ErrShortBody, v.written, rerr)
			}
			return nil, fmt.Errorf("reading upstream: %w", rerr)
		}
	}
	received := v.written
	if holding {
		received++
		v.last = []byte{held}
	}
	if size >= 0 && received != size {
		// Fewer than announced (more stopped the copy above).
		return nil, fmt.Errorf("%w: %w: upstream sent %d bytes, announced %d", ErrShortBody, ErrDigestMismatch, received, size)
	}
	// The hash of everything, from a copy of the file's.
	all, err := cloneHash(f.d.Algorithm(), v.hash)
	if err != nil {
		return nil, err
	}
	all.Write(v.last)
	if got := digest.NewDigest(f.d.Algorithm(), all); got != f.d {
		return nil, fmt.Errorf("%w: upstream bytes hash to %s", ErrDigestMismatch, got)
	}
	return v, nil
}

// fillWriter is a fill's temp file as the copy writes it: what it holds,
// the hash of that, and (once the bytes are verified) the blob's last
// byte, which goes in last.
type fillWriter struct {
	f       *Fill
	file    *os.File
	hash    hash.Hash // of the bytes in the file
	written int64     // bytes in the file
	flushed int64     // bytes handed to writeback
	last    []byte    // the blob's last byte (none for an empty blob)
}

// write appends p to the file, hashed. A disk error leaves what was
// written readable, and its hash lets readers fetch the rest from the
// upstream and still verify it all.
func (v *fillWriter) write(p []byte) error {
	s := v.f.s
	if _, err := s.writeData(v.file, p); err != nil {
		s.diskError(err)
		return newUnfinished(v.written, v.hash, fmt.Errorf("writing cache file: %w", err))
	}
	v.hash.Write(p)
	v.written += int64(len(p))
	if !s.opts.NoSync && v.written-v.flushed >= writebackChunk {
		startWriteback(v.file, v.flushed, v.written-v.flushed)
		v.flushed = v.written
	}
	return nil
}

// publish tells the readers how many bytes the file holds.
func (v *fillWriter) publish() error {
	f := v.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.written = v.written
	f.cond.Broadcast()
	if f.state == stateDone {
		return f.err
	}
	return nil
}

// writeLast completes the file with the blob's last byte, flushed when
// sync, and returns the blob's size and whether the flush worked.
func (v *fillWriter) writeLast(sync bool) (size int64, flushed bool, err error) {
	flushed = sync
	if len(v.last) > 0 {
		if err := v.write(v.last); err != nil {
			return 0, false, err
		}
		if sync {
			if err := v.file.Sync(); err != nil {
				v.f.s.diskError(err)
				flushed = false
			}
		}
		if err := v.publish(); err != nil {
			return 0, false, err
		}
	}
	return v.written, flushed, nil
}

// cloneHash copies the state of h, a hash of algorithm alg.
func cloneHash(alg digest.Algorithm, h hash.Hash) (hash.Hash, error) {
	m, ok := h.(encoding.BinaryMarshaler)
	if !ok {
		return nil, fmt.Errorf("blobcache: cannot copy a %s hash", alg)
	}
	state, err := m.MarshalBinary()
	if err != nil {
		return nil, err
	}
	c := alg.Hash()
	u, ok := c.(encoding.BinaryUnmarshaler)
	if !ok {
		return nil, fmt.Errorf("blobcache: cannot copy a %s hash", alg)
	}
	if err := u.UnmarshalBinary(state); err != nil {
		return nil, err
	}
	return c, nil
}

func (f *Fill) releaseFile() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fileRefs--
	if f.fileRefs == 0 && f.file != nil {
		f.file.Close()
		f.file = nil
	}
}

type onceCloser struct {
	io.ReadCloser
	once sync.Once
	err  error
}

func (c *onceCloser) Close() error {
	c.once.Do(func() { c.err = c.ReadCloser.Close() })
	return c.err
}

// Reader waits (honouring ctx) until the leader Started or Failed and
// returns a reader from byte 0. Errors wrap ErrFillFailed (leader failed,
// fill abandoned, bad bytes, store closed) or are ctx.Err(); then the
// caller should make its own upstream request. ctx also bounds the Reader's
// blocking Read and Seek calls: once it is done they return ctx.Err().
func (f *Fill) Reader(ctx context.Context) (*Reader, error) {
	select {
	case <-f.started:
	default:
		// Only wait if we must: a started fill is usable even with a done
		// ctx, whose Reads then return what is already there.
		select {
		case <-f.started:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s := f.s
	s.mu.Lock()
	f.mu.Lock()
	if f.err != nil {
		err := f.err
		f.mu.Unlock()
		s.mu.Unlock()
		return nil, err
	}
	if f.file != nil {
		// Attach to the shared descriptor: works while running and after
		// the verdict, as long as someone still holds the file.
		r := f.attachLocked(ctx)
		f.mu.Unlock()
		s.mu.Unlock()
		return r, nil
	}
	committed := f.committed
	f.mu.Unlock()
	s.mu.Unlock()
	if !committed {
		return nil, fmt.Errorf("%w: fill ended", ErrFillFailed)
	}
	b, err := s.Get(f.d)
	if err != nil {
		// Committed but evicted or never kept (too big) before we came.
		return nil, fmt.Errorf("%w: %w", ErrFillFailed, err)
	}
	return &Reader{blob: b}, nil
}

// attachLocked makes a Reader on the fill's file (f.mu held, and s.mu
// too once the fill may have an entry to pin).
func (f *Fill) attachLocked(ctx context.Context) *Reader {
	f.readers++
	f.fileRefs++
	f.lingerGen++ // a pending linger timer must not abandon us
	if f.linger != nil {
		f.linger.Stop()
	}
	if f.entry != nil {
		f.entry.pins++
	}
	r := &Reader{f: f, ctx: ctx}
	r.stop = context.AfterFunc(ctx, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	return r
}

// Reader is an io.ReadSeekCloser over a fill, usable with http.ServeContent
// for Range requests on a fill in progress. Each Reader reads from byte 0 at
// the speed bytes arrive. It never returns io.EOF unless the bytes were
// verified: the last byte is held back until the verdict, and a failed fill
// makes every Read return an error wrapping ErrFillFailed (and the cause,
// e.g. ErrDigestMismatch), so a server never ends a bad response cleanly.
//
// A Reader is for one goroutine, except Close, which may be called from
// another to unblock a waiting Read.
type Reader struct {
	f      *Fill
	blob   *Blob // set instead of f when the entry was already committed
	ctx    context.Context
	stop   func() bool
	off    int64
	end    int64 // SetRangeEnd; 0: the blob's end
	closed bool  // guarded by f.mu

	resume ResumeFunc // SetResume
	res    *resumed   // the upstream rest, once the fill stopped on a disk error
	own    *os.File   // the fill's file opened for SendTo
}

// Info returns the digest, media type and size (-1 while unknown).
func (r *Reader) Info() Info {
	if r.blob != nil {
		return r.blob.Info
	}
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	return Info{Digest: r.f.d, Size: r.f.size, MediaType: r.f.mediaType}
}

// Read reads from the current offset, blocking while the bytes there have
// not arrived yet.
func (r *Reader) Read(p []byte) (int, error) {
	if r.blob != nil {
		return r.blob.File.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	avail, err := r.wait()
	if err != nil {
		var u *Unfinished
		if size := r.Info().Size; r.resume != nil && size >= 0 && errors.As(err, &u) {
			return r.readUnfinished(p, u, size)
		}
		return 0, err
	}
	if int64(len(p)) > avail-r.off {
		p = p[:avail-r.off]
	}
	n, err := r.f.file.ReadAt(p, r.off)
	r.off += int64(n)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err == io.EOF {
		// The file is shorter than what was written to it: never a clean end.
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// wait blocks until the file holds bytes at the Reader's offset that may
// be read and returns where they end; or io.EOF at the end of a committed
// blob; or why no more bytes will come (the fill's error, ctx's, or
// os.ErrClosed). ctx only matters when it would block: bytes already there
// are delivered regardless.
func (r *Reader) wait() (avail int64, err error) {
	f := r.f
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		switch {
		case r.closed:
			return 0, os.ErrClosed
		case f.err != nil:
			return 0, f.err
		}
		// The file never holds the blob's last byte before the verdict
		// (see copy); a range that ends earlier holds back its own last
		// byte here.
		avail = f.written
		if !f.committed && r.end > 0 && avail > r.end-1 {
			avail = r.end - 1
		}
		switch {
		case r.off < avail:
			return avail, nil
		case f.committed:
			return 0, io.EOF
		}
		if err := r.ctx.Err(); err != nil {
			return 0, err
		}
		f.cond.Wait()
	}
}

// SendTo writes the blob from the Reader's offset to its end into w as
// its bytes arrive, handing w.ReadFrom a descriptor of the fill's file of
// its own, which a network connection sends with sendfile: no copy through
// this process. The file never holds the blob's last byte before the
// verdict, so whatever it holds may go out. A failed fill ends it with the
// fill's error, as Read does (a fill stopped by a full disk goes on
// through Read, from the upstream). For whole-blob responses only: a range
// end set with SetRangeEnd is not honoured.
func (r *Reader) SendTo(w interface {
	io.Writer
	io.ReaderFrom
}) (int64, error) {
	if r.blob != nil {
		return w.ReadFrom(r.blob.File)
	}
	own, err := r.ownFile()
	if err != nil {
		return io.Copy(w, r) // no descriptor of our own: copy
	}
	var sent int64
	size := r.Info().Size
	for {
		if size >= 0 && r.off >= size {
			// Every byte went out, the last one only after the verdict:
			// done, without waiting for the commit that follows.
			return sent, nil
		}
		if _, err := r.wait(); err != nil {
			if err == io.EOF {
				return sent, nil
			}
			var u *Unfinished
			if errors.As(err, &u) && r.resume != nil {
				n, err := io.Copy(w, r)
				return sent + n, err
			}
			return sent, err
		}
		if _, err := own.Seek(r.off, io.SeekStart); err != nil {
			return sent, err
		}
		n, err := w.ReadFrom(own)
		r.off += n
		sent += n
		if err != nil {
			return sent, err
		}
	}
}

// ownFile opens the fill's file anew for this Reader: an open file of its
// own, whose offset no other reader moves.
func (r *Reader) ownFile() (*os.File, error) {
	if r.own != nil {
		return r.own, nil
	}
	f := r.f
	f.mu.Lock()
	file := f.file // held open by this Reader's reference
	f.mu.Unlock()
	own, err := reopen(file)
	if err != nil {
		return nil, err
	}
	r.own = own
	return own, nil
}

// Seek sets the offset for the next Read. Offsets beyond the bytes written so
// far are allowed (Reads then wait). io.SeekEnd needs the size: it is known
// when upstream announced it; otherwise Seek waits for the verdict.
func (r *Reader) Seek(offset int64, whence int) (int64, error) {
	if r.blob != nil {
		return r.blob.File.Seek(offset, whence)
	}
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = r.off + offset
	case io.SeekEnd:
		size, err := r.waitSize()
		if err != nil {
			return 0, err
		}
		abs = size + offset
	default:
		return 0, errors.New("blobcache: invalid whence")
	}
	if abs < 0 {
		return 0, errors.New("blobcache: negative position")
	}
	r.off = abs
	return abs, nil
}

func (r *Reader) waitSize() (int64, error) {
	f := r.f
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		switch {
		case r.closed:
			return 0, os.ErrClosed
		case f.err != nil:
			return 0, f.err
		case f.size >= 0:
			return f.size, nil
		case r.ctx.Err() != nil:
			return 0, r.ctx.Err()
		}
		f.cond.Wait()
	}
}

// Close releases the reader. When the last reader of a running fill closes,
// the fill goes on for Options.Linger, then is abandoned.
func (r *Reader) Close() error {
	if r.blob != nil {
		return r.blob.Close()
	}
	f := r.f
	f.mu.Lock()
	if r.closed {
		f.mu.Unlock()
		return nil
	}
	r.closed = true
	f.readers--
	e := f.entry
	if f.readers == 0 && f.state == stateRunning {
		f.armLingerLocked()
	}
	r.closeRestLocked()
	f.cond.Broadcast() // wakes our own Read if it waits in another goroutine
	f.mu.Unlock()
	r.stop()
	if r.own != nil {
		r.own.Close()
	}
	if e != nil {
		f.s.unpin(e)
	}
	f.releaseFile()
	return nil
}
