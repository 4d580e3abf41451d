package blobcache

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// stored is an entry a test put in a cache directory.
type stored struct {
	d     digest.Digest
	data  []byte
	media string
	scope string
}

// fillDir commits n entries (spread over the prefix directories by their
// digests) into a cache directory through the store's API, and closes it.
func fillDir(t *testing.T, dir string, n int) []stored {
	t.Helper()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	var out []stored
	for i := range n {
		data, d := blob(100+i, uint64(1000+i))
		st := stored{d: d, data: data, media: fmt.Sprintf("application/x-test-%d", i%3), scope: fmt.Sprintf("repo/%d", i%5)}
		if err := s.Put(d, st.media, data, st.scope); err != nil {
			t.Fatal(err)
		}
		out = append(out, st)
	}
	s.Close()
	return out
}

// holdLoader makes the background loader of the next Open stop after the
// first directory each of its workers indexed (or, atRead, only read),
// until release is called; held waits until every worker is stopped there.
func holdLoader(t *testing.T, atRead bool) (held func(), release func()) {
	t.Helper()
	gate := make(chan struct{})
	arrived := make(chan struct{}, loadWorkers)
	loadDirHook = func(read bool) {
		if read != atRead {
			return
		}
		select {
		case arrived <- struct{}{}:
		default: // released already
		}
		<-gate
	}
	held = func() {
		for range loadWorkers {
			<-arrived
		}
	}
	released := false
	release = func() {
		if !released {
			released = true
			close(gate)
		}
	}
	t.Cleanup(func() {
		release()
		loadDirHook = nil
	})
	return held, release
}

// notIndexed returns the entries that the index does not hold now.
func notIndexed(s *Store, all []stored) []stored {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []stored
	for _, st := range all {
		if s.index.find(st.d) == nil {
			out = append(out, st)
		}
	}
	return out
}

// TestHitBeforeTheLoaderReachesIt: while the index loads, an entry the
// loader has not reached is served at once, found on disk, with its media
// type and scopes; once the loader gets there, it is not indexed twice.
func TestHitBeforeTheLoaderReachesIt(t *testing.T) {
	dir := t.TempDir()
	all := fillDir(t, dir, 40)
	held, release := holdLoader(t, false)
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer release() // before Close, which waits for the loader
	held()
	pending := notIndexed(s, all)
	if len(pending) < 2 {
		t.Fatalf("the held loader indexed %d of %d entries", len(all)-len(pending), len(all))
	}
	st := pending[0]
	if !bytes.Equal(mustGet(t, s, st.d), st.data) {
		t.Fatal("wrong bytes for an entry found on disk")
	}
	info, err := s.Stat(st.d)
	if err != nil || info.MediaType != st.media || info.Size != int64(len(st.data)) {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	if !s.Allowed(st.d, st.scope) || s.Allowed(st.d, "repo/other") {
		t.Fatal("scopes of an entry found on disk are not those of its sidecar")
	}
	other := pending[1] // Allowed alone finds it too
	if !s.Allowed(other.d, other.scope) {
		t.Fatal("Allowed missed an entry the loader has not reached")
	}
	missing := digest.FromString("never stored")
	if _, err := s.Get(missing); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a digest never stored: %v", err)
	}
	select {
	case <-s.IndexLoaded():
		t.Fatal("the index is complete while its loader is held")
	default:
	}
	release()
	<-s.IndexLoaded()
	checkIndex(t, s, false)
	var want int64
	for _, st := range all {
		want += int64(len(st.data))
	}
	if s.Size() != want || s.index.count != len(all) {
		t.Fatalf("after the load: %d entries, %d bytes; want %d, %d", s.index.count, s.Size(), len(all), want)
	}
}

// TestEvictionDuringLoadSparesReaders: a bound set while the index loads
// evicts what is indexed, least recently used first, and what the loader
// indexes afterwards, but never an entry being read; the entry goes once
// its reader is done.
func TestEvictionDuringLoadSparesReaders(t *testing.T) {
	dir := t.TempDir()
	all := fillDir(t, dir, 40)
	held, release := holdLoader(t, false)
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer release() // before Close, which waits for the loader
	held()
	pending := notIndexed(s, all)
	if len(pending) == 0 {
		t.Fatal("the held loader indexed everything")
	}
	read := pending[0]
	b, err := s.Get(read.d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// An entry the loader indexed (unused since): pinned by a reader that
	// does not count as a use, as an upload's is.
	var loaded stored
	for _, st := range all {
		if s.Contains(st.d) && st.d != read.d && !containsDigest(pending, st.d) {
			loaded = st
			break
		}
	}
	if loaded.d == "" {
		t.Fatal("the loader indexed nothing")
	}
	up, err := s.open(loaded.d, false)
	if err != nil {
		t.Fatal(err)
	}
	s.SetMaxSize(1)
	release()
	<-s.IndexLoaded()
	for _, pinned := range []struct {
		st stored
		f  *os.File
	}{{read, b.File}, {loaded, up.File}} {
		if !s.Contains(pinned.st.d) {
			t.Fatalf("entry %s evicted while being read", pinned.st.d)
		}
		got, err := io.ReadAll(io.NewSectionReader(pinned.f, 0, 1<<20))
		if err != nil || !bytes.Equal(got, pinned.st.data) {
			t.Fatalf("reading an entry during eviction: %v", err)
		}
		if data, _ := s.paths(pinned.st.d); !fileExists(data) {
			t.Fatalf("file of %s removed while being read", pinned.st.d)
		}
	}
	checkIndex(t, s, true)
	if want := int64(len(read.data) + len(loaded.data)); s.Size() != want {
		t.Fatalf("size %d after eviction to the bound, want only the pinned entries' %d", s.Size(), want)
	}
	onDisk := entriesOnDisk(t, dir)
	if len(onDisk) != 2 {
		t.Fatalf("%d entries left on disk, want the 2 being read: %v", len(onDisk), onDisk)
	}
	b.Close()
	up.Close()
	if s.Contains(read.d) || s.Contains(loaded.d) || s.Size() != 0 {
		t.Fatal("entries over the bound stayed after their readers closed")
	}
	checkIndex(t, s, false)
}

// TestLoaderSkipsWhatWasRemovedMeanwhile: an entry the loader read from
// disk, then found by a hit and evicted before the loader indexes what it
// read, is not indexed again (its files are gone).
func TestLoaderSkipsWhatWasRemovedMeanwhile(t *testing.T) {
	dir := t.TempDir()
	all := fillDir(t, dir, 40)
	held, release := holdLoader(t, true)
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer release()
	held()
	// Every worker has read a directory and indexed nothing yet: remove
	// every entry (each found on disk first), so that some of them are
	// among what the workers read.
	for _, st := range all {
		if !s.remove(st.d) {
			t.Fatalf("cannot remove %s", st.d)
		}
	}
	release()
	<-s.IndexLoaded()
	checkIndex(t, s, false)
	for _, st := range all {
		if s.Contains(st.d) {
			t.Fatalf("removed entry %s indexed again by the loader", st.d)
		}
	}
	if s.Size() != 0 {
		t.Fatalf("size %d after removing everything", s.Size())
	}
}

func containsDigest(list []stored, d digest.Digest) bool {
	for _, st := range list {
		if st.d == d {
			return true
		}
	}
	return false
}

// entriesOnDisk lists the data files under dir's blobs/.
func entriesOnDisk(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(dir, "blobs"), func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.Type().IsRegular() && !strings.HasSuffix(path, ".json") {
			out = append(out, filepath.Base(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// treeDigest maps every file under dir to the sha256 of its content.
func treeDigest(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := make(map[string]string)
	err := filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		rel, _ := filepath.Rel(dir, path)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

const crashHelperEnv = "BLOBCACHE_CRASH_DURING_LOAD"

// TestCrashDuringLoad: a process killed while its loader is halfway
// through (serving a hit and a commit meanwhile) leaves the cache directory
// as it was, but for the new entry and what was inconsistent before: every
// entry intact, no stray file; the next Open serves them all.
func TestCrashDuringLoad(t *testing.T) {
	if dir := os.Getenv(crashHelperEnv); dir != "" {
		crashHelper(dir)
		return
	}
	dir := t.TempDir()
	all := fillDir(t, dir, 40)
	// Inconsistent leftovers of earlier crashes: data without sidecar and
	// sidecar without data, which any Open removes.
	orphanData, od := blob(50, 7)
	odPath := filepath.Join(dir, "blobs", "sha256", od.Encoded()[:2], od.Encoded())
	os.MkdirAll(filepath.Dir(odPath), 0o755)
	if err := os.WriteFile(odPath, orphanData, 0o644); err != nil {
		t.Fatal(err)
	}
	before := treeDigest(t, dir)
	delete(before, filepath.Join("blobs", "sha256", od.Encoded()[:2], od.Encoded()))

	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashDuringLoad$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(out)
	var newDigest digest.Digest
	for lines.Scan() {
		if d, ok := strings.CutPrefix(lines.Text(), "loading, committed "); ok {
			newDigest = digest.Digest(d)
			break
		}
	}
	if newDigest == "" {
		t.Fatal("the helper process did not get halfway through its load")
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no Close, no cleanup
		t.Fatal(err)
	}
	cmd.Wait()

	after := treeDigest(t, dir)
	for path, sum := range before {
		if after[path] != sum {
			t.Errorf("%s changed or removed by the crashed load", path)
		}
	}
	newData, _ := blob(300, 99)
	for path := range after {
		if _, ok := before[path]; ok {
			continue
		}
		isNew := strings.Contains(path, newDigest.Encoded())
		isOrphan := strings.Contains(path, od.Encoded())
		if !isNew && !isOrphan && !strings.HasPrefix(path, "tmp"+string(filepath.Separator)) {
			t.Errorf("stray file %s after the crash", path)
		}
	}

	s := openStore(t, Options{Dir: dir})
	checkIndex(t, s, false)
	for _, st := range append(all, stored{d: newDigest, data: newData}) {
		if !bytes.Equal(mustGet(t, s, st.d), st.data) {
			t.Fatalf("entry %s wrong after the crash", st.d)
		}
	}
	if s.Contains(od) || fileExists(odPath) {
		t.Fatal("data without a sidecar kept")
	}
	if left := tmpEntries(t, s); len(left) != 0 {
		t.Fatalf("tmp/ not cleaned: %v", left)
	}
}

// crashHelper is the process that crashes: it opens the cache, and while
// its loader is held after the first directories, serves a hit and commits
// a new entry, then says so and waits to be killed.
func crashHelper(dir string) {
	gate := make(chan struct{})
	loadDirHook = func(read bool) {
		if !read {
			<-gate
		}
	}
	s, err := Open(Options{Dir: dir})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	data, d := blob(300, 99)
	if err := s.Put(d, "", data); err != nil {
		fmt.Println("put:", err)
		os.Exit(1)
	}
	fmt.Println("loading, committed " + d.String())
	time.Sleep(time.Hour) // killed here
}

// TestTagRecordsHeldOnlyWhileHot: a tag record's content stays in memory
// only while it is among the most recently used; a colder one is read
// from disk again, the same.
func TestTagRecordsHeldOnlyWhileHot(t *testing.T) {
	s := openStore(t, Options{})
	s.hotTags = 2
	_, d := blob(10, 1)
	keys := []string{"r/a:1", "r/b:2", "r/c:3"}
	for i, k := range keys {
		if err := s.SetTag(k, Tag{Digest: d, Size: int64(i), Checked: time.Unix(int64(i), 0)}); err != nil {
			t.Fatal(err)
		}
	}
	held := func(key string) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		te := s.tagIndex[tagName(key)]
		return te != nil && te.loaded
	}
	if held("r/a:1") || !held("r/b:2") || !held("r/c:3") {
		t.Fatal("the content of the coldest record is still held, or a hot one's is not")
	}
	tag, ok := s.Tag("r/a:1")
	if !ok || tag.Size != 0 || tag.Digest != d {
		t.Fatalf("cold record read back as %+v, %v", tag, ok)
	}
	if !held("r/a:1") || held("r/b:2") {
		t.Fatal("using a record did not make it hot, or the coldest stayed")
	}
	if s.Size() != 3*tagBlock {
		t.Fatalf("records counted %d, want all three", s.Size())
	}
}

// TestScopeSetsNeverMerge: interned scope sets are told apart whatever
// bytes their scopes hold: an entry readable by one odd scope is not
// readable by the scopes that scope's bytes spell.
func TestScopeSetsNeverMerge(t *testing.T) {
	s := openStore(t, Options{})
	b1, d1 := blob(10, 1)
	b2, d2 := blob(10, 2)
	if err := s.Put(d1, "", b1, "a", "b"); err != nil {
		t.Fatal(err)
	}
	odd := scopeSetKey([]string{"a", "b"}) // one scope holding a set's key
	if err := s.Put(d2, "", b2, odd); err != nil {
		t.Fatal(err)
	}
	if !s.Allowed(d1, "a") || !s.Allowed(d1, "b") || s.Allowed(d1, odd) {
		t.Fatal("scopes of the first entry wrong")
	}
	if s.Allowed(d2, "a") || s.Allowed(d2, "b") || !s.Allowed(d2, odd) {
		t.Fatal("an odd scope widened into the scopes its bytes spell")
	}
	if err := s.Allow(d1, "c"); err != nil {
		t.Fatal(err)
	}
	if got := s.scopesOf(d1); strings.Join(got, ",") != "a,b,c" {
		t.Fatalf("scopes after Allow: %q", got)
	}
	if got := s.scopesOf(d2); len(got) != 1 || got[0] != odd {
		t.Fatalf("the other entry's scopes changed: %q", got)
	}
}

// TestLRUOrderRightOnceLoaded: once the loader is done, eviction follows
// the recorded uses of the entries (atime), with what was used since the
// store opened, loaded or not, as the most recent.
func TestLRUOrderRightOnceLoaded(t *testing.T) {
	dir := t.TempDir()
	all := fillDir(t, dir, 30)
	base := time.Now().Add(-time.Hour)
	for i, st := range all { // entry i was last used i minutes after base
		enc := st.d.Encoded()
		data := filepath.Join(dir, "blobs", "sha256", enc[:2], enc)
		if err := os.Chtimes(data, base.Add(time.Duration(i)*time.Minute), base.Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	held, release := holdLoader(t, false)
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer release()
	held()
	mustGet(t, s, all[0].d) // the least recent on disk, used now: the most recent of all
	release()
	<-s.IndexLoaded()
	const keep = 5 // all[0] and the 4 most recent on disk
	kept := func(i int) bool { return i == 0 || i >= len(all)-keep+1 }
	var total int64
	for i, st := range all {
		if kept(i) {
			total += int64(len(st.data))
		}
	}
	s.SetMaxSize(total)
	for i, st := range all {
		if s.Contains(st.d) != kept(i) {
			t.Fatalf("entry used at +%dm: kept %v, want %v", i, s.Contains(st.d), kept(i))
		}
	}
	checkIndex(t, s, false)
}
