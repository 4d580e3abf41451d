package blobcache

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"
)

const manifestType = "application/vnd.oci.image.manifest.v1+json"

func TestPutGet(t *testing.T) {
	s := openStore(t, Options{})
	data := []byte(`{"schemaVersion":2}`)
	d := digest.FromBytes(data)

	if _, err := s.Get(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get before Put: %v, want ErrNotFound", err)
	}
	if err := s.Put(d, manifestType, data); err != nil {
		t.Fatal(err)
	}
	b, err := s.Get(d)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(b.File)
	b.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("Get read %q", got)
	}
	if b.Digest != d || b.Size != int64(len(data)) || b.MediaType != manifestType || b.ModTime.IsZero() {
		t.Fatalf("Blob info = %+v, modtime %v", b.Info, b.ModTime)
	}
	if err := b.Close(); err != nil {
		t.Fatal("second Close must be a no-op")
	}
	if info, err := s.Stat(d); err != nil || info != b.Info {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	if s.Size() != int64(len(data)) {
		t.Fatalf("Size() = %d", s.Size())
	}
	// Idempotent.
	if err := s.Put(d, manifestType, data); err != nil {
		t.Fatal(err)
	}
	if s.Size() != int64(len(data)) {
		t.Fatalf("Size() after second Put = %d", s.Size())
	}
}

func TestPutSHA512(t *testing.T) {
	s := openStore(t, Options{})
	data := []byte("sha512 content")
	d := digest.SHA512.FromBytes(data)
	if err := s.Put(d, "text/plain", data); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, d); !bytes.Equal(got, data) {
		t.Fatalf("got %q", got)
	}
	if !fileExists(filepath.Join(s.blobsDir, "sha512", d.Encoded()[:2], d.Encoded())) {
		t.Fatal("sha512 entry not under blobs/sha512")
	}
}

func TestPutMismatch(t *testing.T) {
	s := openStore(t, Options{})
	d := digest.FromString("right")
	if err := s.Put(d, manifestType, []byte("wrong")); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Put wrong bytes: %v", err)
	}
	if _, err := s.Get(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after failed Put: %v", err)
	}
	if n := tmpEntries(t, s); len(n) != 0 {
		t.Fatalf("tmp not empty: %v", n)
	}
}

func TestInvalidDigests(t *testing.T) {
	s := openStore(t, Options{})
	good := digest.FromString("x")
	bad := []digest.Digest{
		"",
		"sha256",
		"sha256:",
		"sha256:../../../../etc/passwd",
		"sha256:" + digest.Digest(strings.ToUpper(good.Encoded())),
		"sha256:" + digest.Digest(good.Encoded()[:63]),
		"sha256:" + digest.Digest(good.Encoded()) + "0",
		"sha256:" + digest.Digest(good.Encoded()[:62]) + "/a",
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"../sha256:" + digest.Digest(good.Encoded()),
		"sha256/..:" + digest.Digest(good.Encoded()),
	}
	for _, d := range bad {
		if _, err := s.Get(d); !errors.Is(err, ErrInvalidDigest) {
			t.Errorf("Get(%q) = %v", d, err)
		}
		if err := s.Put(d, "", []byte("x")); !errors.Is(err, ErrInvalidDigest) {
			t.Errorf("Put(%q) = %v", d, err)
		}
		if err := s.Allow(d, "scope"); !errors.Is(err, ErrInvalidDigest) {
			t.Errorf("Allow(%q) = %v", d, err)
		}
		if s.Allowed(d, "scope") || s.Contains(d) {
			t.Errorf("Allowed/Contains(%q) true", d)
		}
		if err := s.SetTag("k", Tag{Digest: d}); !errors.Is(err, ErrInvalidDigest) {
			t.Errorf("SetTag(%q) = %v", d, err)
		}
		f, leader := s.Join(d)
		if leader {
			t.Errorf("Join(%q) made a leader", d)
		}
		if _, err := f.Reader(t.Context()); !errors.Is(err, ErrInvalidDigest) || !errors.Is(err, ErrFillFailed) {
			t.Errorf("Join(%q).Reader = %v", d, err)
		}
	}
	// Nothing may have been created outside the cache directory layout.
	des, _ := os.ReadDir(s.blobsDir)
	if len(des) != 0 {
		t.Fatalf("blobs dir has %d entries", len(des))
	}
}

func TestAllowScopes(t *testing.T) {
	s := openStore(t, Options{})
	data := []byte("manifest")
	d := digest.FromBytes(data)
	if err := s.Allow(d, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Allow on unknown digest: %v", err)
	}
	if err := s.Put(d, manifestType, data); err != nil {
		t.Fatal(err)
	}
	if s.Allowed(d, "docker.io/library/alpine") {
		t.Fatal("allowed before Allow")
	}
	for range 2 {
		if err := s.Allow(d, "docker.io/library/alpine"); err != nil {
			t.Fatal(err)
		}
	}
	if !s.Allowed(d, "docker.io/library/alpine") || s.Allowed(d, "docker.io/library/busybox") {
		t.Fatal("Allowed wrong")
	}
	_, meta := s.paths(d)
	b, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := parseSidecar(b, d)
	if err != nil || len(sc.Scopes) != 1 || sc.Scopes[0] != "docker.io/library/alpine" || sc.MediaType != manifestType {
		t.Fatalf("sidecar = %+v, %v", sc, err)
	}
}

func TestEvictionLRU(t *testing.T) {
	s := openStore(t, Options{MaxSize: 3000})
	var ds []digest.Digest
	put := func(seed uint64) digest.Digest {
		b, d := blob(1000, seed)
		if err := s.Put(d, "", b); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
		return d
	}
	a, b, c := put(1), put(2), put(3)
	mustGet(t, s, a) // a becomes most recent: b is now the oldest
	d := put(4)
	if s.Contains(b) {
		t.Fatal("least recently used entry b survived")
	}
	for _, x := range []digest.Digest{a, c, d} {
		if !s.Contains(x) {
			t.Fatalf("%s evicted", x)
		}
	}
	if s.Size() != 3000 {
		t.Fatalf("Size() = %d", s.Size())
	}
	dataB, metaB := s.paths(b)
	if fileExists(dataB) || fileExists(metaB) {
		t.Fatal("evicted files still on disk")
	}

	// A pinned entry is skipped, even when it is the oldest.
	pinned, err := s.Get(c)
	if err != nil {
		t.Fatal(err)
	}
	mustGet(t, s, a)
	mustGet(t, s, d) // order now: c (oldest, pinned), a, d
	e := put(5)
	if !s.Contains(c) || s.Contains(a) {
		t.Fatal("eviction did not skip the pinned entry")
	}
	f := put(6)
	g := put(7) // all evictable ones go; c stays while pinned
	if !s.Contains(c) || !s.Contains(f) || !s.Contains(g) || s.Contains(d) || s.Contains(e) {
		t.Fatal("unexpected eviction set")
	}
	// A pinned entry stays readable even though the store is full of others.
	got, _ := io.ReadAll(pinned.File)
	if digest.FromBytes(got) != c {
		t.Fatal("pinned entry bytes changed")
	}
	pinned.Close()
	h := put(8)
	if s.Contains(c) || !s.Contains(h) {
		t.Fatal("after unpin, c should be the one evicted")
	}
	if s.Size() > 3000 {
		t.Fatalf("Size() = %d over MaxSize", s.Size())
	}
}

func TestFullOfPinnedEntries(t *testing.T) {
	// MaxSize is a bound on disk use: when everything else is pinned, a new
	// entry is the one evicted (readers already streaming it are unaffected).
	s := openStore(t, Options{MaxSize: 2000})
	var blobs []*Blob
	for i := range 2 {
		b, d := blob(1000, uint64(10+i))
		if err := s.Put(d, "", b); err != nil {
			t.Fatal(err)
		}
		bl, err := s.Get(d)
		if err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, bl)
	}
	b, d := blob(1000, 12)
	if err := s.Put(d, "", b); err != nil {
		t.Fatal(err)
	}
	if s.Contains(d) || s.Size() != 2000 {
		t.Fatalf("store went over MaxSize: Size() = %d", s.Size())
	}
	for _, bl := range blobs {
		if !s.Contains(bl.Digest) {
			t.Fatal("pinned entry evicted")
		}
		bl.Close()
	}
	if err := s.Put(d, "", b); err != nil || !s.Contains(d) || s.Size() != 2000 {
		t.Fatalf("after unpin: %v, Size() = %d", err, s.Size())
	}
}

func TestRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})

	manifest := []byte(`{"layers":[]}`)
	md := digest.FromBytes(manifest)
	if err := s.Put(md, manifestType, manifest); err != nil {
		t.Fatal(err)
	}
	if err := s.Allow(md, "docker.io/library/alpine"); err != nil {
		t.Fatal(err)
	}

	// A blob committed through a fill, with a scope allowed during the fill.
	layer, ld := blob(300<<10, 7)
	f, leader := s.Join(ld)
	if !leader {
		t.Fatal("not leader")
	}
	lbody := newPipeBody()
	if err := f.Start(Source{Body: lbody, Size: int64(len(layer)), MediaType: "application/vnd.oci.image.layer.v1.tar+gzip"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Allow(ld, "ghcr.io/org/private"); err != nil {
		t.Fatal(err)
	}
	lbody.feed(layer, 64<<10)
	lbody.pw.Close()
	waitFor(t, "fill commit", func() bool { return s.Contains(ld) })

	// A fill interrupted by Close: must vanish.
	body := newPipeBody()
	_, pd := blob(1<<20, 8)
	pf, _ := s.Join(pd)
	if err := pf.Start(Source{Body: body, Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	go body.feed(make([]byte, 4096), 1024)
	waitFor(t, "partial write", func() bool { return pf.writtenNow() > 0 })

	checked := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	if err := s.SetTag("docker.io/library/alpine:latest", Tag{Digest: md, MediaType: manifestType, Size: int64(len(manifest)), Checked: checked}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !body.closed.Load() {
		t.Fatal("Close did not close the upstream body of a running fill")
	}

	// Debris a crash could leave, and garbage.
	os.WriteFile(filepath.Join(dir, "tmp", "fill-123"), []byte("partial"), 0o644)
	orphanData, _ := blob(10, 9)
	od := digest.FromBytes(orphanData)
	odPath, odMeta := s.paths(od)
	os.MkdirAll(filepath.Dir(odPath), 0o755)
	os.WriteFile(odPath, orphanData, 0o644) // data without sidecar
	_, sd := blob(10, 10)
	_, sdMeta := s.paths(sd)
	os.MkdirAll(filepath.Dir(sdMeta), 0o755)
	os.WriteFile(sdMeta, []byte(`{"digest":"`+sd.String()+`","size":10}`), 0o644) // sidecar without data
	junk := filepath.Join(dir, "blobs", "sha256", "README")
	os.WriteFile(junk, []byte("not ours"), 0o644)
	junk2 := filepath.Join(dir, "blobs", "sha256", md.Encoded()[:2], "notadigest")
	os.WriteFile(junk2, []byte("not ours"), 0o644)
	// An entry whose sidecar disagrees with the data size.
	_, bd := blob(10, 11)
	bdPath, bdMeta := s.paths(bd)
	os.MkdirAll(filepath.Dir(bdPath), 0o755)
	os.WriteFile(bdPath, make([]byte, 5), 0o644)
	os.WriteFile(bdMeta, []byte(`{"digest":"`+bd.String()+`","size":10}`), 0o644)

	s2 := openStore(t, Options{Dir: dir})
	if n := tmpEntries(t, s2); len(n) != 0 {
		t.Fatalf("tmp not cleaned at Open: %v", n)
	}
	if got := mustGet(t, s2, md); !bytes.Equal(got, manifest) {
		t.Fatal("manifest lost")
	}
	info, err := s2.Stat(ld)
	if err != nil || info.Size != int64(len(layer)) || info.MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Fatalf("layer info after restart = %+v, %v", info, err)
	}
	if !bytes.Equal(mustGet(t, s2, ld), layer) {
		t.Fatal("layer bytes lost")
	}
	if !s2.Allowed(md, "docker.io/library/alpine") || !s2.Allowed(ld, "ghcr.io/org/private") || s2.Allowed(ld, "docker.io/library/alpine") {
		t.Fatal("scopes not kept across restart")
	}
	tag, ok := s2.Tag("docker.io/library/alpine:latest")
	if !ok || tag.Digest != md || tag.MediaType != manifestType || tag.Size != int64(len(manifest)) || !tag.Checked.Equal(checked) {
		t.Fatalf("tag after restart = %+v, %v", tag, ok)
	}
	if s2.Contains(pd) {
		t.Fatal("interrupted fill committed")
	}
	if s2.Contains(od) || fileExists(odPath) || fileExists(odMeta) {
		t.Fatal("data without sidecar kept")
	}
	if s2.Contains(sd) || fileExists(sdMeta) {
		t.Fatal("sidecar without data kept")
	}
	if s2.Contains(bd) || fileExists(bdPath) {
		t.Fatal("entry with wrong size kept")
	}
	if !fileExists(junk) || !fileExists(junk2) {
		t.Fatal("unknown files must be left alone")
	}
	if s2.Size() != int64(len(manifest)+len(layer))+tagBlock { // the entries and one tag record
		t.Fatalf("Size() after restart = %d", s2.Size())
	}
	// A retry after the interrupted fill makes a new leader.
	if _, leader := s2.Join(pd); !leader {
		t.Fatal("no leader for a digest whose fill was interrupted")
	}
}

func TestRestartKeepsRecency(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	var ds []digest.Digest
	for i := range 4 {
		b, d := blob(1000, uint64(20+i))
		if err := s.Put(d, "", b); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	s.Close()
	// Recency on disk: ds[2] oldest, then ds[0], ds[3], ds[1] newest (atime
	// is what Get writes back; mtime stays the commit time).
	base := time.Now().Add(-time.Hour)
	order := []int{2, 0, 3, 1}
	for rank, i := range order {
		p, _ := s.paths(ds[i])
		if err := os.Chtimes(p, base.Add(time.Duration(rank)*time.Minute), base.Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	s2 := openStore(t, Options{Dir: dir, MaxSize: 2000})
	if s2.Contains(ds[2]) || s2.Contains(ds[0]) || !s2.Contains(ds[3]) || !s2.Contains(ds[1]) {
		t.Fatal("Open did not evict the least recently used entries")
	}
}

func TestGetWritesRecency(t *testing.T) {
	s := openStore(t, Options{})
	b, d := blob(100, 30)
	if err := s.Put(d, "", b); err != nil {
		t.Fatal(err)
	}
	p, _ := s.paths(d)
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(p, old, old)
	s.mu.Lock()
	e := s.index.find(d)
	e.touched, e.modTime = unixSeconds(old), old.UnixNano()
	s.mu.Unlock()
	mustGet(t, s, d)
	fi, _ := os.Stat(p)
	if at := accessTime(fi); !at.After(old.Add(time.Hour)) {
		t.Skipf("atime not available here (%v)", at)
	}
	if !fi.ModTime().Equal(old) {
		t.Fatalf("Get changed mtime (Last-Modified) to %v", fi.ModTime())
	}
}

func TestGetAfterExternalRemoval(t *testing.T) {
	s := openStore(t, Options{})
	b, d := blob(100, 31)
	if err := s.Put(d, "", b); err != nil {
		t.Fatal(err)
	}
	p, _ := s.paths(d)
	os.Remove(p)
	if _, err := s.Get(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of removed file = %v", err)
	}
	if s.Contains(d) || s.Size() != 0 {
		t.Fatal("index kept a removed entry")
	}
}

func TestPutWithSync(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir()}) // NoSync false: the fsync path
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, d := blob(64<<10, 32)
	if err := s.Put(d, "", b); err != nil {
		t.Fatal(err)
	}
	f, _ := s.Join(digest.FromString("sync fill"))
	if err := f.Start(Source{Body: io.NopCloser(strings.NewReader("sync fill")), Size: 9}); err != nil {
		t.Fatal(err)
	}
	r, err := f.Reader(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAllFrom(r)
	r.Close()
	if err != nil || string(got) != "sync fill" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// TestUnavailableDir runs in a synctest bubble: time moves only when the
// test waits, so "within RetryAfter" and "after it" are exact.
func TestUnavailableDir(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log, logs := observed()
		const retryAfter = time.Minute
		s := openStore(t, Options{Logger: log, RetryAfter: retryAfter})
		// Root ignores permission bits, so break the directory another way: a
		// regular file where tmp/ should be.
		if err := os.RemoveAll(s.tmpDir); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s.tmpDir, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		data, d := blob(1000, 40)
		f, leader := s.Join(d)
		if !leader {
			t.Fatal("not leader")
		}
		follower, _ := s.Join(d)
		body := newPipeBody()
		err := f.Start(Source{Body: body, Size: 1000})
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Start on broken dir = %v", err)
		}
		if body.reads.Load() != 0 || body.closed.Load() {
			t.Fatal("Start consumed or closed the body it could not cache")
		}
		if _, err := follower.Reader(t.Context()); !errors.Is(err, ErrFillFailed) {
			t.Fatalf("follower Reader = %v", err)
		}
		if err := s.Put(d, "", data); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Put on broken dir = %v", err)
		}

		// Repair; within RetryAfter the store still answers fast without
		// trying, after it it works again.
		os.Remove(s.tmpDir)
		os.Mkdir(s.tmpDir, 0o755)
		start := func() error {
			f, leader := s.Join(d)
			if !leader {
				t.Fatal("failed fill did not free the digest")
			}
			return f.Start(Source{Body: io.NopCloser(bytes.NewReader(data)), Size: 1000})
		}
		if err := start(); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Start within RetryAfter of the failure = %v, want ErrUnavailable", err)
		}
		time.Sleep(retryAfter)
		if err := start(); err != nil {
			t.Fatalf("Start after RetryAfter, directory repaired: %v", err)
		}
		waitFor(t, "commit after recovery", func() bool { return s.Contains(d) })
		if n := logs.FilterMessageSnippet("disk error").Len(); n != 1 {
			t.Fatalf("disk error logged %d times, want once", n)
		}
	})
}

func TestTags(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	if _, ok := s.Tag("nope"); ok {
		t.Fatal("hit on unknown tag")
	}
	d := digest.FromString("m")
	key := "registry-1.docker.io/library/alpine:3.20"
	t1 := Tag{Digest: d, MediaType: manifestType, Size: 1, Checked: time.Now()}
	if err := s.SetTag(key, t1); err != nil {
		t.Fatal(err)
	}
	d2 := digest.FromString("m2")
	t2 := Tag{Digest: d2, MediaType: manifestType, Size: 2, Checked: time.Now()}
	if err := s.SetTag(key, t2); err != nil {
		t.Fatal(err)
	}
	if got, ok := s.Tag(key); !ok || got.Digest != d2 {
		t.Fatalf("Tag = %+v, %v", got, ok)
	}
	if err := s.SetTag("neg", Tag{Digest: d, Size: -1}); err == nil {
		t.Fatal("negative size accepted")
	}
	s.Close()
	s2 := openStore(t, Options{Dir: dir})
	if got, ok := s2.Tag(key); !ok || got.Digest != d2 || got.Size != 2 {
		t.Fatalf("Tag after restart = %+v, %v", got, ok)
	}
	// A damaged record is a miss, not an error or a panic.
	os.WriteFile(s2.tagPath("broken"), []byte("{"), 0o644)
	if _, ok := s2.Tag("broken"); ok {
		t.Fatal("damaged tag record served")
	}
	// A record stored under another key's name is refused.
	b, _ := os.ReadFile(s2.tagPath(key))
	os.MkdirAll(filepath.Dir(s2.tagPath("other")), 0o755)
	os.WriteFile(s2.tagPath("other"), b, 0o644)
	if _, ok := s2.Tag("other"); ok {
		t.Fatal("tag record of another key served")
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(Options{}); err == nil {
		t.Fatal("Open with empty Dir succeeded")
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := Open(Options{Dir: f}); err == nil {
		t.Fatal("Open on a regular file succeeded")
	}
}

func TestClosedStore(t *testing.T) {
	s := openStore(t, Options{})
	data := []byte("x")
	d := digest.FromBytes(data)
	s.Close()
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if _, err := s.Get(d); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close = %v", err)
	}
	if err := s.Put(d, "", data); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Put after Close = %v", err)
	}
	f, leader := s.Join(d)
	if leader {
		t.Fatal("leader on closed store")
	}
	if _, err := f.Reader(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Reader after Close = %v", err)
	}
}
