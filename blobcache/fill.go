package blobcache

// A fill's state: one leader per digest starts or fails it, followers
// join it; it ends committed or failed, once, for every reader.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

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
	// OnFilled, if set, is called once, from the fill's own goroutine,
	// when the fill got every byte and they proved right: with their
	// count and the time from Start to the fill's end (stats.go).
	OnFilled func(size int64, took time.Duration)
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
	onFilled  func(size int64, took time.Duration) // Source.OnFilled; set with fromRemote

	mu        sync.Mutex // lock order: s.mu before mu
	cond      sync.Cond  // on mu; broadcast on every write and state change
	state     fillState
	err       error // why the fill failed; wraps ErrFillFailed
	committed bool  // bytes verified (and stored, unless not kept: see endCommittedLocked)
	finishing bool  // bytes verified and flushed: the last byte and the commit follow at once
	entry     *entry
	size      int64 // -1 while unknown
	mediaType string
	body      io.ReadCloser
	file      *os.File // read by every reader through ReadAt; nil once nobody uses it
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
	if s.lookupLocked(d) != nil {
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
	f.onFilled = src.OnFilled
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
// the bytes were verified but not kept: bigger than MaxSize, or the disk
// failed at the commit (see notKeptLocked). Readers still
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
		e.pins += int32(f.readers)
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
