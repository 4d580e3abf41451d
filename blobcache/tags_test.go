package blobcache

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// tagFiles counts the record files under dir's tags/.
func tagFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(dir, "tags"), func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func testTag(i int) Tag {
	return Tag{Digest: digest.FromString(fmt.Sprint(i)), MediaType: manifestType, Size: int64(i), Checked: time.Now()}
}

// TestTagRecordsCountAgainstMaxSize: records count in the store's size,
// so many of them are evicted (least recently used first) instead of
// growing without bound, on disk and in memory.
func TestTagRecordsCountAgainstMaxSize(t *testing.T) {
	dir := t.TempDir()
	const keep = 10
	s := openStore(t, Options{Dir: dir, MaxSize: keep * tagBlock})
	if err := s.SetTag("key-0", testTag(0)); err != nil {
		t.Fatal(err)
	}
	if got := s.Size(); got != tagBlock {
		t.Fatalf("Size() = %d with one record, want %d", got, tagBlock)
	}
	for i := 1; i < 3000; i++ {
		if err := s.SetTag(fmt.Sprintf("key-%d", i), testTag(i)); err != nil {
			t.Fatal(err)
		}
		if i == 2995 {
			// The oldest of the records kept, used now: no longer
			// the least recently used.
			if _, ok := s.Tag("key-2986"); !ok {
				t.Fatal("key-2986 evicted too early")
			}
		}
	}
	if got := s.Size(); got > keep*tagBlock {
		t.Errorf("Size() = %d over MaxSize %d", got, keep*tagBlock)
	}
	if n := tagFiles(t, dir); n > keep {
		t.Errorf("%d record files on disk, max_size holds %d", n, keep)
	}
	s.mu.Lock()
	indexed := len(s.tagIndex)
	s.mu.Unlock()
	if indexed > keep {
		t.Errorf("%d records indexed in memory, max_size holds %d", indexed, keep)
	}
	if _, ok := s.Tag("key-0"); ok {
		t.Error("the least recently used record was kept")
	}
	if got, ok := s.Tag("key-2999"); !ok || got.Digest != testTag(2999).Digest {
		t.Errorf("the latest record: %+v, %v", got, ok)
	}
	if _, ok := s.Tag("key-2986"); !ok {
		t.Error("a record used recently was evicted before older ones")
	}
	if _, ok := s.Tag("key-2987"); ok {
		t.Error("a record used less recently outlived it")
	}
}

// TestTagRecordsEvictedWithEntries: entries and records share one bound
// and one recency order.
func TestTagRecordsEvictedWithEntries(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir, MaxSize: 10 * tagBlock})
	old := bytes.Repeat([]byte{1}, 4*tagBlock)
	oldD := digest.FromBytes(old)
	if err := s.Put(oldD, "application/octet-stream", old); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		if err := s.SetTag(fmt.Sprintf("key-%d", i), testTag(i)); err != nil {
			t.Fatal(err)
		}
	}
	if !s.Contains(oldD) || s.Size() != 10*tagBlock {
		t.Fatalf("before the bound is reached: entry kept %v, Size() %d", s.Contains(oldD), s.Size())
	}
	recent := bytes.Repeat([]byte{2}, tagBlock)
	recentD := digest.FromBytes(recent)
	if err := s.Put(recentD, "application/octet-stream", recent); err != nil {
		t.Fatal(err)
	}
	if s.Contains(oldD) {
		t.Error("the least recently used entry outlived newer tag records")
	}
	for i := 0; i < 6; i++ {
		if _, ok := s.Tag(fmt.Sprintf("key-%d", i)); !ok {
			t.Errorf("record key-%d, newer than the evicted entry, is gone", i)
		}
	}
	// More records push out the oldest record, then the entry.
	for i := 6; i < 9; i++ {
		if err := s.SetTag(fmt.Sprintf("key-%d", i), testTag(i)); err != nil {
			t.Fatal(err)
		}
	}
	if s.Size() > 10*tagBlock {
		t.Errorf("Size() = %d over MaxSize", s.Size())
	}
	if !s.Contains(recentD) {
		t.Error("the entry was evicted before older records")
	}
}

// TestTagRecordsCountedAfterRestart: the records on disk count from Open,
// before any of them is read, and a lower max_size evicts them.
func TestTagRecordsCountedAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	for i := 0; i < 20; i++ {
		if err := s.SetTag(fmt.Sprintf("key-%d", i), testTag(i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s = openStore(t, Options{Dir: dir})
	if got := s.Size(); got != 20*tagBlock {
		t.Errorf("Size() after restart = %d, want %d", got, 20*tagBlock)
	}
	if got, ok := s.Tag("key-7"); !ok || got.Digest != testTag(7).Digest || got.Size != 7 {
		t.Errorf("key-7 after restart: %+v, %v", got, ok)
	}
	s.SetMaxSize(5 * tagBlock)
	if n := tagFiles(t, dir); n > 5 || s.Size() > 5*tagBlock {
		t.Errorf("after SetMaxSize: %d record files, Size() %d", n, s.Size())
	}
	if _, ok := s.Tag("key-7"); !ok {
		t.Error("the record read last was evicted")
	}
}

// TestTagRecordsConcurrentUse: writers, readers and eviction of records
// running together keep the index and the disk in step.
func TestTagRecordsConcurrentUse(t *testing.T) {
	dir := t.TempDir()
	const keep = 8
	s := openStore(t, Options{Dir: dir, MaxSize: keep * tagBlock})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				key := fmt.Sprintf("key-%d", (g*7+i)%20)
				if i%3 == 0 {
					if got, ok := s.Tag(key); ok && got.Size < 0 {
						t.Errorf("record %s: %+v", key, got)
					}
					continue
				}
				if err := s.SetTag(key, testTag(i)); err != nil {
					t.Error(err)
				}
			}
		}(g)
	}
	wg.Wait()
	s.mu.Lock()
	indexed, counted := len(s.tagIndex), s.tagTotal
	s.mu.Unlock()
	if indexed > keep || counted != int64(indexed)*tagBlock {
		t.Errorf("%d records indexed counting %d bytes; want at most %d, %d bytes each", indexed, counted, keep, tagBlock)
	}
	if n := tagFiles(t, dir); n != indexed {
		t.Errorf("%d record files on disk, %d indexed", n, indexed)
	}
}
