package blobcache

// Reading a fill while it is written: Reader waits for bytes, reads them
// from the fill's temp file, and ends on the fill's verdict.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

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
		// Attach to the fill's descriptor: works while running and after
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
		// Committed but evicted, or never kept (too big, disk error), before we came.
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
// blob; or why no more bytes will come (see waitFor).
func (r *Reader) wait() (avail int64, err error) {
	return r.waitFor(func(f *Fill) (int64, bool, error) {
		// The file never holds the blob's last byte before the verdict
		// (see copy); a range that ends earlier holds back its own last
		// byte here.
		avail := f.written
		if !f.committed && r.end > 0 && avail > r.end-1 {
			avail = r.end - 1
		}
		switch {
		case r.off < avail:
			return avail, true, nil
		case f.committed:
			return 0, true, io.EOF
		}
		return 0, false, nil
	})
}

// waitSize blocks until the blob's size is known (announced, or counted
// at the verdict) and returns it; or why it never will be (see waitFor).
func (r *Reader) waitSize() (int64, error) {
	return r.waitFor(func(f *Fill) (int64, bool, error) {
		return f.size, f.size >= 0, nil
	})
}

// waitFor blocks until ready, asked with f.mu held after every change of
// the fill, says it is done, and returns its answer; or why it never will
// be: the Reader was closed (os.ErrClosed), the fill failed (its error) or
// ctx is done. ctx only matters when it would block: what is there already
// is delivered regardless.
func (r *Reader) waitFor(ready func(f *Fill) (n int64, done bool, err error)) (int64, error) {
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
		if n, done, err := ready(f); done {
			return n, err
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
