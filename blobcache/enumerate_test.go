package blobcache

import (
	"errors"
	"io"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestStatsCountEverything: the numbers of a store are those of what it
// holds: entries, tag records, their bytes, the bound, the shared tier.
func TestStatsCountEverything(t *testing.T) {
	s := openStore(t, Options{MaxSize: 1 << 30})
	b1, d1 := blob(100, 1)
	b2, d2 := blob(250, 2)
	for _, p := range []struct {
		d digest.Digest
		b []byte
	}{{d1, b1}, {d2, b2}} {
		if err := s.Put(p.d, "", p.b); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetTag("r\x00a", Tag{Digest: d1, Size: 100, Checked: time.Now()}); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	want := Stats{Dir: s.opts.Dir, Bytes: 350 + tagBlock, DataBytes: 350, TagBytes: tagBlock, MaxSize: 1 << 30,
		Entries: 2, TagRecords: 1, Disk: HealthState{Healthy: true}}
	if st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
}

// TestEntriesAndTagRecordsEnumerated: every entry of the asked media types
// and every tag record comes back, the records whose content is not held
// in memory read from disk.
func TestEntriesAndTagRecordsEnumerated(t *testing.T) {
	s := openStore(t, Options{})
	s.hotTags = 1
	want := map[digest.Digest]string{}
	for i := range 6 {
		b, d := blob(50+i, uint64(10+i))
		mt := "application/x-manifest"
		if i%2 == 1 {
			mt = "application/octet-stream"
		} else {
			want[d] = mt
		}
		if err := s.Put(d, mt, b, "id|up/repo"); err != nil {
			t.Fatal(err)
		}
	}
	entries, complete := s.Entries(func(mt string) bool { return mt == "application/x-manifest" })
	if !complete {
		t.Fatal("index loaded, yet enumeration says it is not complete")
	}
	got := map[digest.Digest]string{}
	for _, e := range entries {
		got[e.Digest] = e.MediaType
		if len(e.Scopes) != 1 || e.Scopes[0] != "id|up/repo" || e.Used.IsZero() || e.Size == 0 {
			t.Errorf("entry %+v", e)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
	for d := range want {
		if _, ok := got[d]; !ok {
			t.Fatalf("entry %s missing", d)
		}
	}

	_, d := blob(10, 1)
	keys := []string{"up\x00r/a\x00one\x00x", "up\x00r/a\x00two\x00x", "up\x00r/b\x00one\x00x"}
	for i, k := range keys {
		if err := s.SetTag(k, Tag{Digest: d, Size: int64(i), Checked: time.Unix(int64(i), 0)}); err != nil {
			t.Fatal(err)
		}
	}
	records, complete := s.TagRecords()
	if !complete {
		t.Fatal("tag records said incomplete")
	}
	var gotKeys []string
	for _, r := range records {
		gotKeys = append(gotKeys, r.Key)
		if r.Digest != d {
			t.Errorf("record %q points at %s", r.Key, r.Digest)
		}
	}
	sort.Strings(gotKeys)
	sort.Strings(keys)
	if len(gotKeys) != 3 || gotKeys[0] != keys[0] || gotKeys[1] != keys[1] || gotKeys[2] != keys[2] {
		t.Fatalf("records %q, want %q (two of them only on disk)", gotKeys, keys)
	}
}

// TestEnumerationWhileLoading: while the loader runs, enumeration says it
// is not complete; once loaded, it holds every entry and record on disk.
func TestEnumerationWhileLoading(t *testing.T) {
	dir := t.TempDir()
	all := fillDir(t, dir, 40)
	s0, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s0.SetTag("k", Tag{Digest: all[0].d, Size: 1, Checked: time.Now()}); err != nil {
		t.Fatal(err)
	}
	<-s0.IndexLoaded()
	s0.Close()

	held, release := holdLoader(t, false)
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	held()
	entries, complete := s.Entries(func(string) bool { return true })
	if complete || len(entries) >= len(all) {
		t.Fatalf("while loading: complete=%v with %d of %d entries", complete, len(entries), len(all))
	}
	if _, complete := s.TagRecords(); complete {
		t.Fatal("tag records complete while loading")
	}
	if !s.Stats().IndexLoading {
		t.Fatal("stats do not say the index loads")
	}
	release()
	<-s.IndexLoaded()
	entries, complete = s.Entries(func(string) bool { return true })
	records, tagsComplete := s.TagRecords()
	if !complete || !tagsComplete || len(entries) != len(all) || len(records) != 1 || records[0].Key != "k" {
		t.Fatalf("loaded: complete=%v/%v, %d of %d entries, records %+v", complete, tagsComplete, len(entries), len(all), records)
	}
}

// TestRemoveWhileRead: removing an entry that a client reads right now
// takes it out of the store (a miss for the next request, its files gone)
// and the reader still gets every byte.
func TestRemoveWhileRead(t *testing.T) {
	s := openStore(t, Options{})
	data, d := blob(1<<20, 7)
	if err := s.Put(d, "", data); err != nil {
		t.Fatal(err)
	}
	b, err := s.Get(d)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 1000)
	if _, err := io.ReadFull(b.File, head); err != nil {
		t.Fatal(err)
	}
	removed := s.Remove(d)
	if len(removed) != 1 || removed[0].Digest != d || removed[0].Size != int64(len(data)) {
		t.Fatalf("removed %+v", removed)
	}
	if s.Contains(d) || s.Stats().DataBytes != 0 {
		t.Fatal("still in the store after Remove")
	}
	dataPath, metaPath := s.paths(d)
	if fileExists(dataPath) || fileExists(metaPath) {
		t.Fatal("files left behind")
	}
	rest, err := io.ReadAll(b.File)
	if err != nil || string(append(head, rest...)) != string(data) {
		t.Fatalf("reader broken by the removal: %v, %d bytes", err, len(head)+len(rest))
	}
	b.Close()
	checkIndex(t, s, false)
	if len(s.Remove(d)) != 0 {
		t.Fatal("removed twice")
	}
	// Committed again afterwards: a new entry, whole.
	if err := s.Put(d, "", data); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, d); string(got) != string(data) {
		t.Fatal("entry committed again reads wrong")
	}
}

// TestRemoveTagsAndDropScopes: removed tag records are gone from memory
// and disk; dropped scopes stay dropped after a restart.
func TestRemoveTagsAndDropScopes(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	b, d := blob(100, 3)
	if err := s.Put(d, "", b, "a|x/one", "a|x/two", "b|x/one"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"k1", "k2"} {
		if err := s.SetTag(k, Tag{Digest: d, Size: 100, Checked: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.RemoveTags("k1", "nope"); n != 1 {
		t.Fatalf("removed %d records, want 1", n)
	}
	if _, ok := s.Tag("k1"); ok {
		t.Fatal("removed record still served")
	}
	if _, err := os.Stat(s.tagPath("k1")); !os.IsNotExist(err) {
		t.Fatalf("removed record's file: %v", err)
	}
	if err := s.DropScopes(d, func(sc string) bool { return sc == "a|x/one" || sc == "b|x/one" }); err != nil {
		t.Fatal(err)
	}
	if s.Allowed(d, "a|x/one") || !s.Allowed(d, "a|x/two") {
		t.Fatal("scopes not dropped, or too many")
	}
	s.Close()
	s2 := openStore(t, Options{Dir: dir})
	if s2.Allowed(d, "b|x/one") || !s2.Allowed(d, "a|x/two") {
		t.Fatal("dropped scopes back after a restart")
	}
	if _, ok := s2.Tag("k2"); !ok {
		t.Fatal("the other record went too")
	}
}

// TestRemovedBetweenLookupAndOpen: an entry removed after Get found it in
// the index and before Get opened its file is a miss (ErrNotFound), and
// leaves no pin behind.
func TestRemovedBetweenLookupAndOpen(t *testing.T) {
	s := openStore(t, Options{})
	data, d := blob(100, 5)
	if err := s.Put(d, "", data); err != nil {
		t.Fatal(err)
	}
	openGapHook = func(digest.Digest) {
		openGapHook = nil
		if len(s.Remove(d)) != 1 {
			t.Error("the entry was not removed")
		}
	}
	defer func() { openGapHook = nil }()
	if _, err := s.Get(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of an entry removed before its open: %v, want ErrNotFound", err)
	}
	checkIndex(t, s, false)
	if err := s.Put(d, "", data); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, d); string(got) != string(data) {
		t.Fatal("committed again, it reads wrong")
	}
}
