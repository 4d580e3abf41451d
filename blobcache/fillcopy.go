package blobcache

// The copy loop of a fill: upstream body to temp file, hashed as it goes,
// the last byte held back until size and digest are verified.

import (
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

// run is the copy goroutine: upstream -> temp file, hashing as bytes pass.
func (f *Fill) run(body io.ReadCloser, file *os.File, size int64) {
	s := f.s
	defer s.wg.Done()
	defer f.releaseFile()
	defer f.reportFilled(time.Now())
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
