package blobcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestFillStreamsAndHoldsBackLastByte(t *testing.T) {
	for _, known := range []bool{true, false} {
		t.Run(fmt.Sprintf("knownSize=%v", known), func(t *testing.T) {
			s := openStore(t, Options{})
			data, d := blob(256<<10, 1)
			size := int64(len(data))
			if !known {
				size = -1
			}
			f, leader := s.Join(d)
			if !leader {
				t.Fatal("first Join is not leader")
			}
			if _, leader2 := s.Join(d); leader2 {
				t.Fatal("second Join is leader too")
			}
			body := newPipeBody()
			if err := f.Start(Source{Body: body, Size: size, MediaType: "application/octet-stream"}); err != nil {
				t.Fatal(err)
			}
			r, err := f.Reader(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if info := r.Info(); info.Digest != d || info.Size != size || info.MediaType != "application/octet-stream" {
				t.Fatalf("Info = %+v", info)
			}

			// Bytes flow as they arrive.
			half := len(data) / 2
			if err := body.feed(data[:half], 10000); err != nil {
				t.Fatal(err)
			}
			// The file holds all but the last byte received: that one
			// waits in the fill until more comes or the verdict.
			waitFor(t, "half written", func() bool { return f.writtenNow() == int64(half-1) })
			got := make([]byte, half-1)
			if _, err := io.ReadFull(r, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data[:half-1]) {
				t.Fatal("streamed bytes differ")
			}
			// Every byte is there, but the verdict is not: the last one
			// waits, outside the file.
			if err := body.feed(data[half:], 10000); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "all but the last byte written", func() bool { return f.writtenNow() == int64(len(data)-1) })
			if p := probe(t, f); len(p) != len(data)-1 {
				t.Fatalf("before verdict a reader got %d of %d bytes", len(p), len(data))
			}
			if s.Contains(d) {
				t.Fatal("committed before EOF")
			}
			body.pw.Close() // EOF: verdict
			rest, err := readAllFrom(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(append(got, rest...), data) {
				t.Fatal("reader bytes differ")
			}
			if !s.Contains(d) {
				t.Fatal("not committed after a clean end")
			}
			if info := r.Info(); info.Size != int64(len(data)) {
				t.Fatalf("Info after commit = %+v", info)
			}
			if !bytes.Equal(mustGet(t, s, d), data) {
				t.Fatal("Get after fill differs")
			}
			// Join on a committed digest reads the entry.
			f2, leader := s.Join(d)
			if leader {
				t.Fatal("Join on a committed digest made a leader")
			}
			r2, err := f2.Reader(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			b2, err := readAllFrom(r2)
			r2.Close()
			if err != nil || !bytes.Equal(b2, data) || r2.Info().Size != int64(len(data)) {
				t.Fatal("Reader of a committed Join differs")
			}
			waitTmpEmpty(t, s)
		})
	}
}

func TestEmptyBlob(t *testing.T) {
	s := openStore(t, Options{})
	d := digest.FromBytes(nil)
	f, _ := s.Join(d)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: 0}); err != nil {
		t.Fatal(err)
	}
	if p := probe(t, f); len(p) != 0 {
		t.Fatal("bytes from nowhere")
	}
	r, _ := f.Reader(t.Context())
	defer r.Close()
	body.pw.Close()
	got, err := readAllFrom(r)
	if err != nil || len(got) != 0 {
		t.Fatalf("empty blob: %q, %v", got, err)
	}
}

// TestBadFills: wrong, too many, too few bytes, upstream error: every reader
// gets an error (never io.EOF), never the last byte, and nothing is kept.
func TestBadFills(t *testing.T) {
	data, d := blob(200<<10, 2)
	wrong := bytes.Clone(data)
	wrong[len(wrong)-1] ^= 1
	upstreamErr := errors.New("connection reset by test")
	cases := []struct {
		name    string
		size    int64
		send    []byte
		endErr  error // CloseWithError on the pipe
		wantErr error
	}{
		{"wrong bytes", int64(len(data)), wrong, nil, ErrDigestMismatch},
		{"wrong bytes unknown size", -1, wrong, nil, ErrDigestMismatch},
		{"too many", int64(len(data)), append(bytes.Clone(data), 'x'), nil, ErrDigestMismatch},
		{"too many vs announced", int64(len(data) - 1), data, nil, ErrDigestMismatch},
		{"too few", int64(len(data)), data[:len(data)-1], nil, ErrDigestMismatch},
		{"too few unknown size", -1, data[:len(data)-1], nil, ErrDigestMismatch},
		{"upstream error", int64(len(data)), data[:len(data)/2], upstreamErr, upstreamErr},
		{"upstream error at the end", -1, data, upstreamErr, upstreamErr},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, Options{})
			f, _ := s.Join(d)
			body := newPipeBody()
			if err := f.Start(Source{Body: body, Size: tc.size}); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			errs := make([]error, 4)
			lens := make([]int, 4)
			for i := range 4 {
				r, err := f.Reader(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer r.Close()
					b, err := readAllFrom(r)
					errs[i], lens[i] = err, len(b)
				}()
			}
			go func() {
				body.feed(tc.send, 7000)
				if tc.endErr != nil {
					body.pw.CloseWithError(tc.endErr)
				} else {
					body.pw.Close()
				}
			}()
			wg.Wait()
			for i := range 4 {
				if errs[i] == nil {
					t.Fatalf("reader %d ended cleanly on bad bytes", i)
				}
				if !errors.Is(errs[i], tc.wantErr) || !errors.Is(errs[i], ErrFillFailed) {
					t.Fatalf("reader %d error = %v, want %v", i, errs[i], tc.wantErr)
				}
				if lens[i] >= len(data) {
					t.Fatalf("reader %d got %d bytes: the last byte must wait for the verdict", i, lens[i])
				}
			}
			if s.Contains(d) || s.Size() != 0 {
				t.Fatal("bad bytes committed")
			}
			waitTmpEmpty(t, s)
			// Retry: a new leader, and this time the bytes are right.
			f2, leader := s.Join(d)
			if !leader {
				t.Fatal("no new leader after a failed fill")
			}
			if err := f2.Start(Source{Body: io.NopCloser(bytes.NewReader(data)), Size: int64(len(data))}); err != nil {
				t.Fatal(err)
			}
			r, _ := f2.Reader(t.Context())
			got, err := readAllFrom(r)
			r.Close()
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("retry: %v", err)
			}
			if !s.Contains(d) {
				t.Fatal("retry not committed")
			}
		})
	}
}

func TestFailLeader(t *testing.T) {
	s := openStore(t, Options{})
	d := digest.FromString("denied")
	f, leader := s.Join(d)
	if !leader {
		t.Fatal("not leader")
	}
	follower, _ := s.Join(d)
	done := make(chan error)
	go func() {
		_, err := follower.Reader(t.Context())
		done <- err
	}()
	cause := errors.New("upstream 401")
	f.Fail(cause)
	if err := <-done; !errors.Is(err, ErrFillFailed) || !errors.Is(err, cause) {
		t.Fatalf("follower Reader = %v", err)
	}
	// Start after Fail must not consume the body.
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: 1}); !errors.Is(err, ErrUnavailable) || body.reads.Load() != 0 {
		t.Fatalf("Start after Fail = %v, reads %d", err, body.reads.Load())
	}
	if _, leader := s.Join(d); !leader {
		t.Fatal("no new leader after Fail")
	}
}

func TestFailAfterStartIsNoop(t *testing.T) {
	s := openStore(t, Options{})
	data, d := blob(1000, 3)
	f, _ := s.Join(d)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: 1000}); err != nil {
		t.Fatal(err)
	}
	f.Fail(errors.New("deferred safety net"))
	r, err := f.Reader(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() { body.feed(data, 100); body.pw.Close() }()
	got, err := readAllFrom(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("fill after deferred Fail: %v", err)
	}
	if err := f.Start(Source{Body: newPipeBody(), Size: 1}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("second Start = %v", err)
	}
}

func TestReaderContext(t *testing.T) {
	s := openStore(t, Options{})
	f, _ := s.Join(digest.FromString("slow"))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() {
		_, err := f.Reader(ctx)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Reader with canceled ctx = %v", err)
	}
	// Blocked Read honours ctx too.
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: 4}); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(t.Context())
	r, err := f.Reader(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := r.Read(make([]byte, 4))
		done <- err
	}()
	cancel2()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("blocked Read after cancel = %v", err)
	}
	// Close from another goroutine unblocks a Read as well.
	r2, _ := f.Reader(t.Context())
	go func() {
		_, err := r2.Read(make([]byte, 4))
		done <- err
	}()
	r2.Close()
	if err := <-done; err == nil {
		t.Fatal("Read after Close succeeded")
	}
	r.Close()
}

func TestSeekAndServeContent(t *testing.T) {
	s := openStore(t, Options{})
	data, d := blob(300<<10, 4)
	f, _ := s.Join(d)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	r, _ := f.Reader(t.Context())
	defer r.Close()
	if end, err := r.Seek(0, io.SeekEnd); err != nil || end != int64(len(data)) {
		t.Fatalf("SeekEnd = %d, %v", end, err)
	}
	// Seek beyond what is written: the read waits for the bytes.
	const off = 200 << 10
	if pos, err := r.Seek(off, io.SeekStart); err != nil || pos != off {
		t.Fatal(err)
	}
	if pos, _ := r.Seek(-10, io.SeekCurrent); pos != off-10 {
		t.Fatalf("SeekCurrent = %d", pos)
	}
	if _, err := r.Seek(-1, io.SeekStart); err == nil {
		t.Fatal("negative seek accepted")
	}
	got := make(chan []byte)
	go func() {
		b := make([]byte, 100)
		io.ReadFull(r, b)
		got <- b
	}()

	// A Range request served with http.ServeContent on a fill in progress.
	rr, _ := f.Reader(t.Context())
	defer rr.Close()
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Range", "bytes=1000-1999")
	rec := httptest.NewRecorder()
	served := make(chan struct{})
	go func() {
		http.ServeContent(rec, req, "", time.Time{}, rr)
		close(served)
	}()

	go func() { body.feed(data, 16<<10); body.pw.Close() }()
	if b := <-got; !bytes.Equal(b, data[off-10:off+90]) {
		t.Fatal("read after seek differs")
	}
	<-served
	if rec.Code != http.StatusPartialContent || !bytes.Equal(rec.Body.Bytes(), data[1000:2000]) {
		t.Fatalf("ServeContent: %d, %d bytes", rec.Code, rec.Body.Len())
	}
	if cr := rec.Header().Get("Content-Range"); cr != fmt.Sprintf("bytes 1000-1999/%d", len(data)) {
		t.Fatalf("Content-Range = %q", cr)
	}
}

func TestSeekEndUnknownSizeWaits(t *testing.T) {
	s := openStore(t, Options{})
	data, d := blob(50<<10, 5)
	f, _ := s.Join(d)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: -1}); err != nil {
		t.Fatal(err)
	}
	r, _ := f.Reader(t.Context())
	defer r.Close()
	type res struct {
		n   int64
		err error
	}
	out := make(chan res)
	go func() {
		n, err := r.Seek(0, io.SeekEnd)
		out <- res{n, err}
	}()
	body.feed(data, 4096)
	waitFor(t, "all but the last byte written", func() bool { return f.writtenNow() == int64(len(data)-1) })
	select {
	case <-out:
		t.Fatal("SeekEnd returned before the size was known")
	default:
	}
	body.pw.Close()
	if r := <-out; r.err != nil || r.n != int64(len(data)) {
		t.Fatalf("SeekEnd = %d, %v", r.n, r.err)
	}
	// And on a failed fill of unknown size, SeekEnd errors.
	_, d2 := blob(10, 6)
	f2, _ := s.Join(d2)
	body2 := newPipeBody()
	f2.Start(Source{Body: body2, Size: -1})
	r2, _ := f2.Reader(t.Context())
	defer r2.Close()
	go body2.pw.CloseWithError(errors.New("boom"))
	if _, err := r2.Seek(0, io.SeekEnd); !errors.Is(err, ErrFillFailed) {
		t.Fatalf("SeekEnd on failed fill = %v", err)
	}
}

func TestLeaderClosesEarly(t *testing.T) {
	s := openStore(t, Options{Linger: time.Hour})
	data, d := blob(1<<20, 7)
	f, _ := s.Join(d)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	leaderR, _ := f.Reader(t.Context())
	follower, leader := s.Join(d)
	if leader {
		t.Fatal("follower is leader")
	}
	fr, err := follower.Reader(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	go func() { body.feed(data, 32<<10); body.pw.Close() }()
	io.ReadFull(leaderR, make([]byte, 1000))
	leaderR.Close() // the leader's client went away
	got, err := readAllFrom(fr)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("follower after leader left: %v", err)
	}
	if !s.Contains(d) {
		t.Fatal("not committed")
	}
}

func TestFillGoesOnWithoutReaders(t *testing.T) {
	// Within Linger, a fill nobody reads any more still completes, so the
	// next pull is a hit.
	s := openStore(t, Options{Linger: time.Hour})
	data, d := blob(100<<10, 8)
	f, _ := s.Join(d)
	body := newPipeBody()
	f.Start(Source{Body: body, Size: int64(len(data))})
	r, _ := f.Reader(t.Context())
	r.Close()
	body.feed(data, 8192)
	body.pw.Close()
	waitFor(t, "commit with no reader", func() bool { return s.Contains(d) })
}

// TestLingerAbandons runs in a synctest bubble: its time is virtual, so
// "longer than Linger" is exact, however busy the machine.
func TestLingerAbandons(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := openStore(t, Options{Linger: 5 * time.Second, StallTimeout: time.Hour})
		data, d := blob(100<<10, 9)
		f, _ := s.Join(d)
		body := newPipeBody()
		if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		// A reader open longer than Linger keeps the fill alive.
		r, _ := f.Reader(t.Context())
		body.feed(data[:1000], 1000)
		time.Sleep(2 * 5 * time.Second) // twice Linger
		if f.doneNow() {
			t.Fatal("fill abandoned while a reader was open")
		}
		r.Close()
		// Then with nobody reading, it is abandoned: body closed, temp removed.
		waitFor(t, "abandon", func() bool { return body.closed.Load() && f.doneNow() })
		waitTmpEmpty(t, s)
		if _, err := f.Reader(t.Context()); !errors.Is(err, ErrAbandoned) {
			t.Fatalf("Reader of abandoned fill = %v", err)
		}
		if s.Contains(d) {
			t.Fatal("abandoned fill committed")
		}
		if _, leader := s.Join(d); !leader {
			t.Fatal("no new leader after abandon")
		}

		// Started but never read at all: abandoned too.
		_, d2 := blob(10, 10)
		f2, _ := s.Join(d2)
		body2 := newPipeBody()
		f2.Start(Source{Body: body2, Size: 10})
		waitFor(t, "abandon unread fill", func() bool { return body2.closed.Load() && f2.doneNow() })
	})
}

func TestLeaderTimeout(t *testing.T) {
	s := openStore(t, Options{LeaderTimeout: 30 * time.Millisecond})
	d := digest.FromString("lost leader")
	f, _ := s.Join(d)
	follower, _ := s.Join(d)
	if _, err := follower.Reader(t.Context()); !errors.Is(err, ErrFillFailed) {
		t.Fatalf("follower of a silent leader = %v", err)
	}
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: 1}); !errors.Is(err, ErrUnavailable) || body.reads.Load() != 0 {
		t.Fatalf("late Start = %v", err)
	}
	if _, leader := s.Join(d); !leader {
		t.Fatal("digest stuck after leader timeout")
	}
}

func TestAllowDuringFill(t *testing.T) {
	s := openStore(t, Options{})
	data, d := blob(1000, 11)
	f, _ := s.Join(d)
	if err := s.Allow(d, "before-start"); err != nil {
		t.Fatal(err)
	}
	body := newPipeBody()
	f.Start(Source{Body: body, Size: 1000})
	if err := s.Allow(d, "during"); err != nil {
		t.Fatal(err)
	}
	if !s.Allowed(d, "during") || !s.Allowed(d, "before-start") || s.Allowed(d, "other") {
		t.Fatal("Allowed during fill wrong")
	}
	body.feed(data, 1000)
	body.pw.Close()
	waitFor(t, "commit", func() bool { return s.Contains(d) })
	if !s.Allowed(d, "during") || !s.Allowed(d, "before-start") {
		t.Fatal("scopes of the fill lost at commit")
	}
	// A failed fill's scopes are gone with it.
	_, d2 := blob(10, 12)
	f2, _ := s.Join(d2)
	s.Allow(d2, "x")
	f2.Fail(errors.New("404"))
	if s.Allowed(d2, "x") {
		t.Fatal("scope of a failed fill kept")
	}
}

func TestTooBigForCache(t *testing.T) {
	s := openStore(t, Options{MaxSize: 10 << 10})
	small, sd := blob(4<<10, 13)
	if err := s.Put(sd, "", small); err != nil {
		t.Fatal(err)
	}
	data, d := blob(50<<10, 14)
	f, _ := s.Join(d)
	body := newPipeBody()
	f.Start(Source{Body: body, Size: int64(len(data))})
	r, _ := f.Reader(t.Context())
	defer r.Close()
	go func() { body.feed(data, 4096); body.pw.Close() }()
	got, err := readAllFrom(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("streaming an entry bigger than MaxSize: %v", err)
	}
	if s.Contains(d) || !s.Contains(sd) || s.Size() != int64(len(small)) {
		t.Fatal("an entry bigger than MaxSize was kept or evicted others")
	}
	waitTmpEmpty(t, s)
	if _, leader := s.Join(d); !leader {
		t.Fatal("no leader for a digest that was not kept")
	}
}

func TestFillReaderPinsCommittedEntry(t *testing.T) {
	s := openStore(t, Options{MaxSize: 3000})
	data, d := blob(1000, 15)
	f, _ := s.Join(d)
	body := newPipeBody()
	f.Start(Source{Body: body, Size: 1000})
	r, _ := f.Reader(t.Context())
	body.feed(data, 1000)
	body.pw.Close()
	waitFor(t, "commit", func() bool { return s.Contains(d) })
	for i := range 5 {
		b, bd := blob(1000, uint64(100+i))
		s.Put(bd, "", b)
	}
	if !s.Contains(d) {
		t.Fatal("entry evicted while a fill reader was open")
	}
	got, err := readAllFrom(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatal(err)
	}
	r.Close()
	b, bd := blob(1000, 200)
	s.Put(bd, "", b)
	if s.Contains(d) {
		t.Fatal("entry still pinned after its reader closed")
	}
}

func TestDiskFullMidFill(t *testing.T) {
	log, logs := observed()
	s := openStore(t, Options{Logger: log, RetryAfter: time.Hour})
	var written int64
	var mu sync.Mutex
	s.writeData = func(f *os.File, p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		if written+int64(len(p)) > 64<<10 {
			return 0, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
		}
		written += int64(len(p))
		return f.Write(p)
	}
	data, d := blob(256<<10, 16)
	f, _ := s.Join(d)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	r, _ := f.Reader(t.Context())
	defer r.Close()
	go body.feed(data, 8192)
	got, err := readAllFrom(r)
	if err == nil || !errors.Is(err, syscall.ENOSPC) || !errors.Is(err, ErrFillFailed) {
		t.Fatalf("reader on a full disk: %v", err)
	}
	if len(got) >= len(data) {
		t.Fatal("reader got every byte of a failed fill")
	}
	if !body.closed.Load() {
		t.Fatal("upstream body not closed after the disk failed")
	}
	waitTmpEmpty(t, s)
	if s.Contains(d) {
		t.Fatal("half-written entry committed")
	}
	// The condition lasts: Start answers ErrUnavailable at once, without
	// touching the body, so the caller passes through.
	for range 3 {
		f2, leader := s.Join(d)
		if !leader {
			t.Fatal("not leader")
		}
		body2 := newPipeBody()
		if err := f2.Start(Source{Body: body2, Size: 1}); !errors.Is(err, ErrUnavailable) || body2.reads.Load() != 0 {
			t.Fatalf("Start while disk is full = %v", err)
		}
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d warnings logged for one condition, want 1", n)
	}
}

func TestCloseAbandonsReaders(t *testing.T) {
	s := openStore(t, Options{})
	data, d := blob(100<<10, 17)
	f, _ := s.Join(d)
	body := newPipeBody()
	f.Start(Source{Body: body, Size: int64(len(data))})
	r, _ := f.Reader(t.Context())
	defer r.Close()
	waiting, _ := s.Join(digest.FromString("never started"))
	body.feed(data[:1000], 1000)
	s.Close()
	if _, err := readAllFrom(r); !errors.Is(err, ErrClosed) {
		t.Fatalf("reader after store Close = %v", err)
	}
	if _, err := waiting.Reader(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("waiting fill after Close = %v", err)
	}
	if len(tmpEntries(t, s)) != 0 {
		t.Fatal("temp files left after Close")
	}
}

// TestFanOut: many readers joining at different points each get every byte
// of a larger blob, and memory does not grow with blob size x readers.
func TestFanOut(t *testing.T) {
	const size = 16 << 20
	const readers = 30
	seed := byte(42)
	d := genDigest(size, seed)
	s := openStore(t, Options{})

	f, leader := s.Join(d)
	if !leader {
		t.Fatal("not leader")
	}
	body := newGenBody(size, seed)
	// Gate the source so that readers join at different points of the fill.
	gate := make(chan struct{})
	gated := &gatedReader{r: body, gate: gate, every: 1 << 20}

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	var wg sync.WaitGroup
	sums := make([][32]byte, readers)
	errs := make([]error, readers)
	start := func(i int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ff, _ := s.Join(d) // followers join by digest, like requests
			r, err := ff.Reader(t.Context())
			if err != nil {
				errs[i] = err
				return
			}
			defer r.Close()
			h := sha256.New()
			buf := make([]byte, 32<<10)
			_, err = io.CopyBuffer(h, onlyReader{r}, buf)
			errs[i] = err
			copy(sums[i][:], h.Sum(nil))
		}()
	}
	if err := f.Start(Source{Body: io.NopCloser(gated), Size: size}); err != nil {
		t.Fatal(err)
	}
	for i := range readers {
		start(i)
		if i%3 == 0 {
			gate <- struct{}{} // let another MiB through
		}
	}
	close(gate)
	wg.Wait()
	want := [32]byte(digestBytes(d))
	for i := range readers {
		if errs[i] != nil {
			t.Fatalf("reader %d: %v", i, errs[i])
		}
		if sums[i] != want {
			t.Fatalf("reader %d got other bytes", i)
		}
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 16<<20 {
		t.Fatalf("allocated %d bytes to deliver %d MiB to %d readers", grown, size>>20, readers)
	}
	if !s.Contains(d) {
		t.Fatal("not committed")
	}
}

type onlyReader struct{ io.Reader }

func digestBytes(d digest.Digest) []byte {
	b, err := hex.DecodeString(d.Encoded())
	if err != nil {
		panic(err)
	}
	return b
}

// gatedReader lets `every` bytes through per receive on gate (unlimited
// once gate is closed).
type gatedReader struct {
	r       io.Reader
	gate    chan struct{}
	every   int64
	allowed int64
	off     int64
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.off >= g.allowed {
		if _, ok := <-g.gate; ok {
			g.allowed += g.every
		} else {
			g.allowed = 1 << 62
		}
	}
	p = p[:min(int64(len(p)), g.allowed-g.off)]
	n, err := g.r.Read(p)
	g.off += int64(n)
	return n, err
}

// TestStress: goroutines get, join, lead, read and close at random points,
// with leaders that fail, send bad bytes or good ones. Invariants: a clean
// end means the right bytes; the store ends consistent (no pins, no temp
// files, size accounting right, committed entries right).
func TestStress(t *testing.T) {
	s := openStore(t, Options{Linger: 5 * time.Millisecond, MaxSize: 250 << 10})
	type obj struct {
		data []byte
		d    digest.Digest
	}
	var objs []obj
	for i := range 4 {
		b, d := blob(100<<10+i*1000, uint64(300+i))
		objs = append(objs, obj{b, d})
	}
	const workers = 24
	const ops = 40
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range ops {
				o := objs[rng.IntN(len(objs))]
				if err := stressOp(t, s, rng, o.data, o.d); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	// Settle: every fill ends (Linger is short), nothing is left in tmp.
	waitFor(t, "fills to end", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.fills) == 0
	})
	waitTmpEmpty(t, s)
	checkIndex(t, s, false)
	for _, o := range objs {
		if s.Contains(o.d) && !bytes.Equal(mustGet(t, s, o.d), o.data) {
			t.Fatal("committed entry has wrong bytes")
		}
	}
}

func stressOp(t *testing.T, s *Store, rng *rand.Rand, data []byte, d digest.Digest) error {
	if rng.IntN(4) == 0 {
		if b, err := s.Get(d); err == nil {
			got, err := io.ReadAll(b.File)
			b.Close()
			if err != nil || !bytes.Equal(got, data) {
				return fmt.Errorf("Get hit with wrong bytes: %v", err)
			}
			return nil
		}
	}
	f, leader := s.Join(d)
	if leader {
		switch rng.IntN(5) {
		case 0:
			f.Fail(errors.New("stress: upstream 500"))
			return nil
		case 1:
			bad := bytes.Clone(data)
			bad[rng.IntN(len(bad))] ^= 0x55
			f.Start(Source{Body: io.NopCloser(&chunky{b: bad, rng: rand.New(rand.NewPCG(rng.Uint64(), 2))}), Size: int64(len(bad))})
		default:
			size := int64(len(data))
			if rng.IntN(2) == 0 {
				size = -1
			}
			f.Start(Source{Body: io.NopCloser(&chunky{b: data, rng: rand.New(rand.NewPCG(rng.Uint64(), 2))}), Size: size})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := f.Reader(ctx)
	if err != nil {
		if errors.Is(err, ErrFillFailed) {
			return nil // a caller would go upstream itself
		}
		return fmt.Errorf("Reader: %v", err)
	}
	defer r.Close()
	if rng.IntN(3) == 0 {
		off := rng.Int64N(int64(len(data)))
		if _, err := r.Seek(off, io.SeekStart); err != nil {
			return err
		}
		buf := make([]byte, 1+rng.IntN(5000))
		n, err := io.ReadFull(r, buf)
		if err != nil && !errors.Is(err, ErrFillFailed) && err != io.ErrUnexpectedEOF {
			return fmt.Errorf("read after seek: %v", err)
		}
		// Bytes of a fill that turns out bad are delivered (all but the
		// last) before the verdict; only a read that reached the clean end
		// proves the bytes right.
		if err == io.ErrUnexpectedEOF && !bytes.Equal(buf[:n], data[off:off+int64(n)]) {
			return fmt.Errorf("bytes after seek differ although the fill ended cleanly")
		}
		return nil
	}
	limit := int64(len(data)) + 1
	if rng.IntN(3) == 0 {
		limit = rng.Int64N(int64(len(data))) // close early
	}
	var buf bytes.Buffer
	_, err = io.Copy(&buf, io.LimitReader(onlyReader{r}, limit))
	got := buf.Bytes()
	if err == nil && limit > int64(len(data)) && !bytes.Equal(got, data) {
		return fmt.Errorf("clean end with wrong bytes (%d of %d)", len(got), len(data))
	}
	if err != nil && !errors.Is(err, ErrFillFailed) {
		return fmt.Errorf("unexpected read error: %v", err)
	}
	return nil
}

// chunky returns its bytes in random small pieces, yielding in between, to
// shuffle the interleaving of writer and readers.
type chunky struct {
	b   []byte
	rng *rand.Rand
}

func (c *chunky) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.b), 1+c.rng.IntN(20000))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	runtime.Gosched()
	return n, nil
}

func TestPutDuringFill(t *testing.T) {
	// A manifest fetched by digest may be Put by one request while another
	// fills it: one entry, counted once, scopes of both kept.
	s := openStore(t, Options{})
	data, d := blob(5000, 18)
	f, _ := s.Join(d)
	body := newPipeBody()
	f.Start(Source{Body: body, Size: int64(len(data)), MediaType: manifestType})
	s.Allow(d, "from-fill")
	r, _ := f.Reader(t.Context())
	defer r.Close()
	if err := s.Put(d, manifestType, data); err != nil {
		t.Fatal(err)
	}
	s.Allow(d, "from-put")
	go func() { body.feed(data, 1000); body.pw.Close() }()
	got, err := readAllFrom(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("fill racing Put: %v", err)
	}
	waitFor(t, "fill end", f.doneNow)
	if s.Size() != int64(len(data)) {
		t.Fatalf("Size() = %d, entry counted twice?", s.Size())
	}
	if !s.Allowed(d, "from-fill") || !s.Allowed(d, "from-put") {
		t.Fatal("scopes lost when a fill met an existing entry")
	}
	waitTmpEmpty(t, s)
}
