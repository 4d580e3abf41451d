package blobcache

// When the disk fails in the middle of a fill (full, or an I/O error), the
// bytes already written stay readable, and each reader can fetch the rest
// from the upstream itself: the fill hands over the hash of what it wrote,
// so the reader still verifies the whole blob before it ends its response.

import (
	"context"
	"encoding"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/opencontainers/go-digest"
)

// Unfinished is the error of a fill that stopped because the cache could
// not store more (disk full or failing) after it had written Offset bytes.
// It wraps ErrFillFailed, ErrUnavailable and the disk error.
type Unfinished struct {
	Offset    int64
	Cause     error
	hashState []byte // of the first Offset bytes; nil if it cannot be saved
}

func newUnfinished(offset int64, h hash.Hash, cause error) *Unfinished {
	u := &Unfinished{Offset: offset, Cause: cause}
	if m, ok := h.(encoding.BinaryMarshaler); ok {
		if state, err := m.MarshalBinary(); err == nil {
			u.hashState = state
		}
	}
	return u
}

func (u *Unfinished) Error() string {
	return fmt.Sprintf("blobcache: fill stopped after %d bytes: %v", u.Offset, u.Cause)
}

func (u *Unfinished) Unwrap() []error { return []error{ErrFillFailed, ErrUnavailable, u.Cause} }

// ResumeFunc fetches a blob from the upstream starting at offset: the body
// must hold exactly the bytes from offset to the end (a 206 to
// "Range: bytes=<offset>-", or the caller's equivalent).
type ResumeFunc func(ctx context.Context, offset int64) (io.ReadCloser, error)

// SetResume lets the Reader go on when its fill stops on a disk error: it
// reads what the fill wrote, then the rest from fetch, and verifies the
// whole blob against the digest before it delivers its last byte. Without
// it such a Reader fails. Call before the first Read.
func (r *Reader) SetResume(fetch ResumeFunc) {
	if r.f != nil {
		r.resume = fetch
	}
}

// SetRangeEnd tells the Reader that its caller reads nothing at or beyond
// end (an HTTP range that stops before the end of the blob). The byte
// before end is then held back until the fill is verified, as the blob's
// last byte always is, so that a response never ends cleanly on bytes that
// turn out wrong. Call before the first Read.
func (r *Reader) SetRangeEnd(end int64) {
	if r.f != nil && end > 0 {
		r.end = end
	}
}

// resumed is a Reader's own upstream request for the bytes its fill did
// not write.
type resumed struct {
	body     io.ReadCloser
	hash     hash.Hash
	pos      int64 // blob offset of the body's next byte
	verified bool
	held     byte // the byte at heldAt, read while verifying
	heldAt   int64
}

// readUnfinished serves Read after the fill stopped with u; size is known.
func (r *Reader) readUnfinished(p []byte, u *Unfinished, size int64) (int, error) {
	last := size // exclusive end of what the caller will read
	if r.end > 0 && r.end < last {
		last = r.end
	}
	if r.off >= last {
		if err := r.verifyRest(u, size); err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	hold := last - 1
	if r.off == hold {
		if err := r.verifyRest(u, size); err != nil {
			return 0, err
		}
	}
	limit := hold // exclusive end of what may go out now
	if r.res != nil && r.res.verified {
		limit = last
	}
	if int64(len(p)) > limit-r.off {
		p = p[:limit-r.off]
	}
	if r.off < u.Offset { // written by the fill
		if int64(len(p)) > u.Offset-r.off {
			p = p[:u.Offset-r.off]
		}
		n, err := r.f.file.ReadAt(p, r.off)
		r.off += int64(n)
		if n == len(p) {
			err = nil
		} else if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	if r.res != nil && r.res.verified {
		if r.off == r.res.heldAt {
			p[0] = r.res.held
			r.off++
			return 1, nil
		}
		return 0, fmt.Errorf("%w: read at %d after the upstream rest was consumed", ErrFillFailed, r.off)
	}
	if err := r.openRest(u); err != nil {
		return 0, err
	}
	if err := r.skipRestTo(r.off, -1); err != nil {
		return 0, err
	}
	n, err := r.res.body.Read(p)
	r.res.hash.Write(p[:n])
	r.res.pos += int64(n)
	r.off += int64(n)
	if n > 0 {
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return 0, fmt.Errorf("%w: reading the rest from the upstream: %w", ErrFillFailed, err)
}

// openRest starts the upstream request for the bytes from u.Offset on,
// with the hash of the bytes before them.
func (r *Reader) openRest(u *Unfinished) error {
	if r.res != nil {
		return nil
	}
	if u.hashState == nil {
		return u
	}
	h := r.f.d.Algorithm().Hash()
	um, ok := h.(encoding.BinaryUnmarshaler)
	if !ok || um.UnmarshalBinary(u.hashState) != nil {
		return u
	}
	body, err := r.resume(r.ctx, u.Offset)
	if err != nil {
		return fmt.Errorf("%w: fetching the rest from the upstream: %w", ErrFillFailed, err)
	}
	// Under f.mu: Close, from another goroutine, closes the body to
	// unblock a Read waiting on it.
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	if r.closed {
		body.Close()
		return os.ErrClosed
	}
	r.res = &resumed{body: body, hash: h, pos: u.Offset, heldAt: -1}
	return nil
}

// skipRestTo reads (and hashes) the upstream rest up to offset to, holding
// back the byte at offset hold (-1: none).
func (r *Reader) skipRestTo(to, hold int64) error {
	res := r.res
	if res.pos > to {
		return fmt.Errorf("%w: cannot go back to %d in the upstream rest", ErrFillFailed, to)
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	for res.pos < to {
		buf := *bp
		if int64(len(buf)) > to-res.pos {
			buf = buf[:to-res.pos]
		}
		n, err := res.body.Read(buf)
		res.hash.Write(buf[:n])
		if hold >= res.pos && hold < res.pos+int64(n) {
			res.held, res.heldAt = buf[hold-res.pos], hold
		}
		res.pos += int64(n)
		if n == 0 && err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("%w: reading the rest from the upstream: %w", ErrFillFailed, err)
		}
	}
	return nil
}

// verifyRest reads the upstream rest to its end and checks the whole blob
// against the digest, holding back the byte at the Reader's offset (the
// one it is about to deliver).
func (r *Reader) verifyRest(u *Unfinished, size int64) error {
	if r.res != nil && r.res.verified {
		return nil
	}
	if err := r.openRest(u); err != nil {
		return err
	}
	hold := int64(-1)
	if r.off >= r.res.pos {
		hold = r.off
	}
	if err := r.skipRestTo(size, hold); err != nil {
		return err
	}
	var one [1]byte
	if n, _ := r.res.body.Read(one[:]); n > 0 {
		return fmt.Errorf("%w: %w: the upstream rest is longer than the announced %d bytes", ErrFillFailed, ErrDigestMismatch, size)
	}
	if got := digest.NewDigest(r.f.d.Algorithm(), r.res.hash); got != r.f.d {
		return fmt.Errorf("%w: %w: upstream bytes hash to %s", ErrFillFailed, ErrDigestMismatch, got)
	}
	r.res.verified = true
	return nil
}

// closeRest ends the Reader's own upstream request, if any (f.mu held).
func (r *Reader) closeRestLocked() {
	if r.res != nil {
		r.res.body.Close()
	}
}
