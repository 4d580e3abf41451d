package blobcache_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/blobcache/s3remote"
)

// TestStatsCountEntriesAndEvictions: Stats reports the store's bytes
// against its bound, its entries and tag records, and counts each entry
// evicted to stay under the bound.
func TestStatsCountEntriesAndEvictions(t *testing.T) {
	s, err := blobcache.Open(blobcache.Options{Dir: t.TempDir(), NoSync: true, MaxSize: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-s.IndexLoaded()
	for i := range 3 {
		data := bytes.Repeat([]byte{byte('a' + i)}, 4000)
		if err := s.PutLocal(digest.FromBytes(data), "application/octet-stream", data); err != nil {
			t.Fatal(err)
		}
	}
	// The third entry took the bytes over 10,000: the oldest went.
	want := counts{Bytes: 8000, MaxSize: 10_000, Entries: 2, Evictions: 1}
	if got := countsOf(s.Stats()); got != want {
		t.Errorf("after three entries of 4,000 bytes: %+v, want %+v", got, want)
	}
	// A tag record counts a block (4,096 bytes): the oldest entry goes.
	if err := s.SetLocalTag("team/app:1", blobcache.Tag{Digest: digest.FromString("x"), Size: 1}); err != nil {
		t.Fatal(err)
	}
	want = counts{Bytes: 4000 + 4096, MaxSize: 10_000, Entries: 1, TagRecords: 1, Evictions: 2}
	if got := countsOf(s.Stats()); got != want {
		t.Errorf("after a tag record: %+v, want %+v", got, want)
	}
}

// TestStatsCountFillsInProgress: a fill counts from Join to its end.
func TestStatsCountFillsInProgress(t *testing.T) {
	s, err := blobcache.Open(blobcache.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f, leader := s.Join(digest.FromString("a blob"))
	if !leader {
		t.Fatal("not the leader of a new fill")
	}
	if got := s.Stats().Fills; got != 1 {
		t.Errorf("with a fill waiting for its upstream: Fills = %d, want 1", got)
	}
	f.Fail(errors.New("upstream answered 404"))
	if got := s.Stats().Fills; got != 0 {
		t.Errorf("after the fill failed: Fills = %d, want 0", got)
	}
}

// TestStatsCountSharedTierErrors: a shared tier that cannot be reached
// counts one error, then rests (Options.RetryAfter) without being asked,
// and without counting more.
func TestStatsCountSharedTierErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close() // nothing listens there any more
	r, err := s3remote.New(s3remote.Config{Endpoint: endpoint, Bucket: "cache", Region: "us-east-1", AccessKey: "k", SecretKey: "secret-key"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := blobcache.Open(blobcache.Options{Dir: t.TempDir(), NoSync: true, Remote: r})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := digest.FromString("not anywhere")
	for range 2 {
		if _, _, err := s.LoadRemote(context.Background(), d, 1<<20); err == nil {
			t.Fatal("LoadRemote from an unreachable shared tier succeeded")
		}
	}
	if got := s.Stats().SharedTierErrors; got != 1 {
		t.Errorf("SharedTierErrors = %d, want 1", got)
	}
}

// counts are the numbers of Stats that the eviction test checks.
type counts struct {
	Bytes, MaxSize      int64
	Entries, TagRecords int
	Evictions           uint64
}

func countsOf(st blobcache.Stats) counts {
	return counts{Bytes: st.Bytes, MaxSize: st.MaxSize, Entries: st.Entries, TagRecords: st.TagRecords, Evictions: st.Evictions}
}
