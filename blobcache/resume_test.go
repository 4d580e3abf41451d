package blobcache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fullAfter makes the store's disk full once limit bytes of fill data are
// written.
func fullAfter(s *Store, limit int64) {
	var mu sync.Mutex
	var written int64
	s.writeData = func(f *os.File, p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		if written+int64(len(p)) > limit {
			return 0, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
		}
		written += int64(len(p))
		return f.Write(p)
	}
}

// restFrom serves data from an offset, as an upstream answers
// "Range: bytes=<offset>-", and records the offsets asked for.
type restFrom struct {
	data    []byte
	mu      sync.Mutex
	offsets []int64
}

func (u *restFrom) fetch(_ context.Context, off int64) (io.ReadCloser, error) {
	u.mu.Lock()
	u.offsets = append(u.offsets, off)
	u.mu.Unlock()
	return io.NopCloser(bytes.NewReader(u.data[off:])), nil
}

// TestDiskFullMidFillResumes: readers of a fill whose disk fills up get the
// bytes written so far from the file and the rest from their own upstream
// request, verified as a whole: every byte, a clean end, nothing kept.
func TestDiskFullMidFillResumes(t *testing.T) {
	s := openStore(t, Options{RetryAfter: time.Hour})
	const limit = 64 << 10
	fullAfter(s, limit)
	data, d := blob(256<<10, 21)
	f, _ := s.Join(d)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	rest := &restFrom{data: data}
	const readers = 3
	var wg sync.WaitGroup
	got := make([][]byte, readers)
	errs := make([]error, readers)
	for i := range readers {
		r, err := f.Reader(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		r.SetResume(rest.fetch)
		wg.Go(func() {
			defer r.Close()
			got[i], errs[i] = readAllFrom(r)
		})
	}
	go body.feed(data, 8192)
	wg.Wait()
	for i := range readers {
		if errs[i] != nil || !bytes.Equal(got[i], data) {
			t.Fatalf("reader %d: %d bytes, err %v; want all %d bytes and a clean end", i, len(got[i]), errs[i], len(data))
		}
	}
	for _, off := range rest.offsets {
		if w := f.writtenNow(); off != w || off == 0 || off > limit {
			t.Fatalf("rest fetched from %d, want %d (the bytes the fill wrote, at most %d)", off, w, limit)
		}
	}
	if len(rest.offsets) != readers {
		t.Fatalf("%d rest fetches, want one per reader (%d)", len(rest.offsets), readers)
	}
	if s.Contains(d) {
		t.Fatal("an entry was committed from a fill whose disk was full")
	}
	waitTmpEmpty(t, s)
}

// TestDiskFullResumeVerifies: when the rest from the upstream does not
// match the digest, the reader never ends cleanly and never delivers the
// last byte.
func TestDiskFullResumeVerifies(t *testing.T) {
	data, d := blob(200<<10, 22)
	wrong := bytes.Clone(data)
	wrong[len(wrong)-1000] ^= 1
	for _, tc := range []struct {
		name string
		rest []byte
	}{
		{"wrong bytes", wrong},
		{"too short", data[:len(data)-1]},
		{"too long", append(bytes.Clone(data), 'x')},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, Options{RetryAfter: time.Hour})
			fullAfter(s, 32<<10)
			f, _ := s.Join(d)
			body := newPipeBody()
			if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
				t.Fatal(err)
			}
			r, _ := f.Reader(t.Context())
			defer r.Close()
			r.SetResume((&restFrom{data: tc.rest}).fetch)
			go body.feed(data, 8192)
			b, err := readAllFrom(r)
			if err == nil {
				t.Fatalf("clean end after %d bytes on a wrong rest", len(b))
			}
			if !errors.Is(err, ErrFillFailed) {
				t.Fatalf("error %v does not wrap ErrFillFailed", err)
			}
			if len(b) >= len(data) {
				t.Fatalf("got %d bytes: the last byte must wait for the verdict", len(b))
			}
		})
	}
}

// TestDiskFullResumeRange: a range that ends before the blob does, read
// from a fill that stopped on a full disk, waits for the whole blob to be
// verified before its last byte, whether that byte is in the file or in the
// rest from the upstream.
func TestDiskFullResumeRange(t *testing.T) {
	data, d := blob(200<<10, 23)
	zeros := make([]byte, len(data))
	const limit = 64 << 10
	for _, rg := range [][2]int64{{100, 1000}, {limit - 10, limit + 5000}, {limit + 10, limit + 20}, {0, limit}} {
		s := openStore(t, Options{RetryAfter: time.Hour})
		fullAfter(s, limit)
		f, _ := s.Join(d)
		body := newPipeBody()
		if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		// One reader whose upstream rest is right, one whose rest is
		// zeros and cannot verify.
		var wg sync.WaitGroup
		for _, rest := range [][]byte{data, zeros} {
			r, err := f.Reader(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			r.SetResume((&restFrom{data: rest}).fetch)
			r.SetRangeEnd(rg[1])
			if _, err := r.Seek(rg[0], io.SeekStart); err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				defer r.Close()
				b, err := readAllFrom(io.LimitReader(r, rg[1]-rg[0]))
				if bytes.Equal(rest, data) {
					if err != nil || !bytes.Equal(b, data[rg[0]:rg[1]]) {
						t.Errorf("range %v: %d bytes, %v", rg, len(b), err)
					}
					return
				}
				if err == nil || int64(len(b)) >= rg[1]-rg[0] {
					t.Errorf("range %v with a wrong rest: %d bytes, err %v; want an error before the last byte", rg, len(b), err)
				}
			})
		}
		go body.feed(data, 8192)
		wg.Wait()
	}
}

// TestRangeEndHeldUntilVerdict: a reader of a fill in progress that reads
// a range ending before the blob's end gets its last byte only with the
// verdict, so bad bytes never make a complete-looking range.
func TestRangeEndHeldUntilVerdict(t *testing.T) {
	data, d := blob(100<<10, 24)
	for _, corrupt := range []bool{false, true} {
		s := openStore(t, Options{})
		f, _ := s.Join(d)
		body := newPipeBody()
		if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		r, _ := f.Reader(t.Context())
		r.SetRangeEnd(1000)
		send := data
		if corrupt {
			send = bytes.Clone(data)
			send[len(send)-1] ^= 1
		}
		// Everything but the last chunk: the range is all there.
		if err := body.feed(send[:len(send)-100], 8192); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the fill to write the bytes", func() bool { return f.writtenNow() == int64(len(send)-100-1) })
		if got := probeReader(t, r, 1000); len(got) != 999 || !bytes.Equal(got, data[:999]) {
			t.Fatalf("before the verdict a reader of bytes 0-999 got %d bytes, want 999", len(got))
		}
		go func() {
			body.feed(send[len(send)-100:], 8192)
			body.pw.Close()
		}()
		last := make([]byte, 1)
		n, err := io.ReadFull(r, last)
		r.Close()
		if corrupt {
			if err == nil || !errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("wrong bytes: last byte of the range delivered (%d, %v)", n, err)
			}
			continue
		}
		if err != nil || last[0] != data[999] {
			t.Fatalf("after the verdict: %d, %v", n, err)
		}
	}
}

// probeReader reads what r delivers now, up to n bytes, without waiting.
func probeReader(t *testing.T, r *Reader, n int) []byte {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	saved := r.ctx
	r.ctx = ctx
	defer func() { r.ctx = saved }()
	b, err := readAllFrom(io.LimitReader(r, int64(n)))
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	return b
}

// TestCommitFailureKeepsReaders: bytes verified but impossible to keep (the
// entry's directory cannot be made) still reach every reader with a clean
// end; nothing is committed and the condition is logged.
func TestCommitFailureKeepsReaders(t *testing.T) {
	log, logs := observed()
	s := openStore(t, Options{Logger: log})
	data, d := blob(150<<10, 25)
	// A file where the entry's directory must go: MkdirAll fails, even as root.
	dataPath, _ := s.paths(d)
	if err := os.MkdirAll(filepath.Dir(filepath.Dir(dataPath)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Dir(dataPath), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f, _ := s.Join(d)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	r, _ := f.Reader(t.Context())
	defer r.Close()
	go func() { body.feed(data, 8192); body.pw.Close() }()
	got, err := readAllFrom(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("reader: %d bytes, %v; want every byte and a clean end", len(got), err)
	}
	if s.Contains(d) {
		t.Fatal("committed although the entry could not be stored")
	}
	if logs.Len() != 1 {
		t.Fatalf("%d warnings, want the disk condition logged once", logs.Len())
	}
	waitTmpEmpty(t, s)
}

// TestStalledUpstreamFailsFill: an upstream that stops sending without
// closing fails the fill after StallTimeout, so readers are not held.
func TestStalledUpstreamFailsFill(t *testing.T) {
	s := openStore(t, Options{StallTimeout: 100 * time.Millisecond})
	data, d := blob(64<<10, 26)
	f, _ := s.Join(d)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	r, _ := f.Reader(t.Context())
	defer r.Close()
	go body.feed(data[:1000], 1000) // and then nothing
	_, err := readAllFrom(r)
	if err == nil || !errors.Is(err, ErrFillFailed) {
		t.Fatalf("reader of a stalled fill: %v", err)
	}
	if !body.closed.Load() {
		t.Fatal("stalled upstream body not closed")
	}
	waitTmpEmpty(t, s)
}

// TestNoRoomEvictsThenPassesThrough: before a fill starts, the store makes
// room for it on the file system by evicting least recently used entries;
// when even that would not be enough, it evicts nothing and Start answers ErrUnavailable (pass through)
// without reading the body, and says so once.
func TestNoRoomEvictsThenPassesThrough(t *testing.T) {
	log, logs := observed()
	s := openStore(t, Options{Logger: log})
	old, oldD := blob(10<<10, 27)
	recent, recentD := blob(10<<10, 28)
	if err := s.Put(oldD, "application/octet-stream", old); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(recentD, "application/octet-stream", recent); err != nil {
		t.Fatal(err)
	}
	var free int64 = minFreeSpace + 100<<10 // room for 100 KiB
	s.freeSpace = func() (int64, error) { return free, nil }

	// 105 KiB: evicting the least recently used entry (10 KiB) makes room.
	data, d := blob(105<<10, 29)
	f, _ := s.Join(d)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
		t.Fatalf("Start with room after one eviction: %v", err)
	}
	f.Fail(nil)
	body.Close()
	if s.Contains(oldD) || !s.Contains(recentD) {
		t.Fatalf("eviction for room: old kept %v, recent kept %v; want only the recent one", s.Contains(oldD), s.Contains(recentD))
	}

	// 1 MiB: no eviction makes room.
	big, bigD := blob(1<<20, 30)
	for range 2 {
		f, leader := s.Join(bigD)
		if !leader {
			t.Fatal("not leader")
		}
		body := newPipeBody()
		err := f.Start(Source{Body: body, Size: int64(len(big))})
		if !errors.Is(err, ErrUnavailable) || body.reads.Load() != 0 {
			t.Fatalf("Start without room = %v (body reads %d), want ErrUnavailable and no read", err, body.reads.Load())
		}
	}
	if logs.Len() != 1 {
		t.Fatalf("%d warnings for one lasting condition, want 1", logs.Len())
	}
	if !s.Contains(recentD) {
		t.Fatal("an entry was evicted for a fill that could not fit anyway")
	}
}

// TestLeaderReaderSeesAnEarlyFailure: the leader's Reader is attached
// before the copy starts, so even an upstream that fails at once is seen
// through the Reader (an error from Read, after at most the bytes that
// came), never as a fill that is gone before the leader could read it.
func TestLeaderReaderSeesAnEarlyFailure(t *testing.T) {
	s := openStore(t, Options{})
	data, d := blob(64<<10, 33)
	f, _ := s.Join(d)
	cut := errors.New("connection reset by test")
	body := io.NopCloser(io.MultiReader(bytes.NewReader(data[:1000]), iotestErrReader{cut}))
	r, err := f.StartReading(t.Context(), Source{Body: body, Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the fill to fail", f.doneNow)
	got, err := readAllFrom(r)
	r.Close()
	if !errors.Is(err, cut) || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("leader reader after an early failure: %d bytes, %v; want the upstream's error", len(got), err)
	}
}

type iotestErrReader struct{ err error }

func (e iotestErrReader) Read([]byte) (int, error) { return 0, e.err }

// TestCloseLetsAFinishingFillCommit: a fill whose bytes are all verified
// and flushed (its client may have them all) is committed even when the
// store closes at that moment; the entry is there at the next Open.
func TestCloseLetsAFinishingFillCommit(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	data, d := blob(100<<10, 41)
	lastWrite := make(chan struct{})
	release := make(chan struct{})
	s.writeData = func(f *os.File, p []byte) (int, error) {
		if len(p) == 1 { // the last byte, written after the verdict
			close(lastWrite)
			<-release
		}
		return f.Write(p)
	}
	f, _ := s.Join(d)
	if err := f.Start(Source{Body: io.NopCloser(bytes.NewReader(data)), Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	<-lastWrite
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	waitFor(t, "Close to begin", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.closed
	})
	close(release)
	<-closed
	s2, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if !bytes.Equal(mustGet(t, s2, d), data) {
		t.Fatal("the finishing fill's entry is not in the store after Close and Open")
	}
}
