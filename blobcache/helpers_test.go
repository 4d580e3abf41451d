package blobcache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// openStore opens a store in a fresh directory; NoSync keeps unit tests off
// the disk's flush path (one test covers the fsync path).
func openStore(t testing.TB, opts Options) *Store {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if !opts.NoSync {
		opts.NoSync = true
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	<-s.IndexLoaded()
	return s
}

// checkIndex checks that the index agrees with itself: every entry found
// by its digest, in the recency list (or the load heap) once, sizes
// summed right; with pinsAllowed false, no entry is still pinned.
func checkIndex(t testing.TB, s *Store, pinsAllowed bool) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	ix := s.index
	seen := make(map[slotID]bool)
	var total int64
	count := func(e *entry) {
		if seen[e.id] {
			t.Errorf("entry %s twice in the order", ix.digestOf(e))
		}
		seen[e.id] = true
		total += e.size
		if ix.find(ix.digestOf(e)) != e {
			t.Errorf("entry %s not found by its digest", ix.digestOf(e))
		}
		if e.pins != 0 && !pinsAllowed {
			t.Errorf("entry %s still pinned %d", ix.digestOf(e), e.pins)
		}
	}
	var prev slotID
	for id := ix.head; id != 0; id = ix.at(id).next {
		e := ix.at(id)
		if e.where != slotListed || e.prev != prev {
			t.Fatalf("recency list broken at slot %d", id)
		}
		count(e)
		prev = id
	}
	if prev != ix.tail {
		t.Errorf("list tail %d, last element %d", ix.tail, prev)
	}
	for _, it := range ix.loaded {
		if ix.heapValid(it) {
			count(ix.at(it.id))
		}
	}
	if len(seen) != ix.count || total != s.total {
		t.Errorf("index inconsistent: %d entries ordered, %d counted; %d bytes vs %d", len(seen), ix.count, total, s.total)
	}
}

// observed returns a logger that records warn and above.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.WarnLevel)
	return zap.New(core), logs
}

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func blob(n int, seed uint64) ([]byte, digest.Digest) {
	b := randBytes(n, seed)
	return b, digest.FromBytes(b)
}

// pipeBody is an upstream body the test feeds chunk by chunk. Write blocks
// until the fill goroutine has taken the bytes.
type pipeBody struct {
	pr     *io.PipeReader
	pw     *io.PipeWriter
	reads  atomic.Int64
	closed atomic.Bool
}

func newPipeBody() *pipeBody {
	pr, pw := io.Pipe()
	return &pipeBody{pr: pr, pw: pw}
}

func (p *pipeBody) Read(b []byte) (int, error) {
	p.reads.Add(1)
	return p.pr.Read(b)
}

func (p *pipeBody) Close() error {
	p.closed.Store(true)
	return p.pr.Close()
}

// feed writes b in chunks of at most chunk bytes. Errors mean the fill went
// away (closed the body), which some tests expect.
func (p *pipeBody) feed(b []byte, chunk int) error {
	for len(b) > 0 {
		n := min(chunk, len(b))
		if _, err := p.pw.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// genBody produces n pseudo-random bytes without allocating per read, so
// that memory tests measure the store and not the source. corruptAt >= 0
// flips that byte.
type genBody struct {
	r         *rand.ChaCha8
	n, off    int64
	corruptAt int64
	closed    atomic.Bool
}

func newGenBody(n int64, seed byte) *genBody {
	var s [32]byte
	s[0] = seed
	return &genBody{r: rand.NewChaCha8(s), n: n, corruptAt: -1}
}

func (g *genBody) Read(p []byte) (int, error) {
	if g.closed.Load() {
		return 0, errors.New("read on closed body")
	}
	if g.off >= g.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), g.n-g.off)]
	g.r.Read(p)
	if g.corruptAt >= g.off && g.corruptAt < g.off+int64(len(p)) {
		p[g.corruptAt-g.off] ^= 0xff
	}
	g.off += int64(len(p))
	return len(p), nil
}

func (g *genBody) Close() error { g.closed.Store(true); return nil }

func genDigest(n int64, seed byte) digest.Digest {
	d, err := digest.FromReader(newGenBody(n, seed))
	if err != nil {
		panic(err)
	}
	return d
}

// waitFor polls cond; used only to reach internal states deterministically,
// never to assert a duration.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (f *Fill) writtenNow() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written
}

func (f *Fill) doneNow() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state == stateDone
}

// tmpEntries lists what is left in Dir/tmp.
func tmpEntries(t testing.TB, s *Store) []string {
	t.Helper()
	des, err := os.ReadDir(s.tmpDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func waitTmpEmpty(t testing.TB, s *Store) {
	t.Helper()
	waitFor(t, "tmp dir to be empty", func() bool { return len(tmpEntries(t, s)) == 0 })
}

// readAllFrom reads r to the end, returning what it got and the final error
// (nil for a clean io.EOF).
func readAllFrom(r io.Reader) ([]byte, error) {
	var buf bytes.Buffer
	_, err := io.Copy(&buf, r)
	return buf.Bytes(), err
}

// probe reads what a Reader would deliver right now without blocking: a
// done ctx makes Read return instead of waiting.
func probe(t testing.TB, f *Fill) []byte {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, err := f.Reader(ctx)
	if err != nil {
		t.Fatalf("probe reader: %v", err)
	}
	defer r.Close()
	b, err := readAllFrom(r)
	if !errors.Is(err, context.Canceled) && err != nil {
		t.Fatalf("probe read: %v", err)
	}
	return b
}

func mustGet(t testing.TB, s *Store, d digest.Digest) []byte {
	t.Helper()
	b, err := s.Get(d)
	if err != nil {
		t.Fatalf("Get(%s): %v", d, err)
	}
	defer b.Close()
	data, err := io.ReadAll(b.File)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
