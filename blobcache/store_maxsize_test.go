package blobcache

import (
	"bytes"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestSetMaxSizeEvictsAtOnce(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ds []digest.Digest
	for i := 0; i < 4; i++ {
		data := bytes.Repeat([]byte{byte(i)}, 1000)
		d := digest.FromBytes(data)
		if err := s.Put(d, "application/octet-stream", data); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	s.SetMaxSize(2500)
	if got := s.Size(); got > 2500 {
		t.Fatalf("size %d after SetMaxSize(2500)", got)
	}
	if s.Contains(ds[0]) || !s.Contains(ds[3]) {
		t.Errorf("eviction did not drop the least recently used first")
	}
	s.SetMaxSize(0)
	if err := s.Put(ds[0], "application/octet-stream", bytes.Repeat([]byte{0}, 1000)); err != nil || !s.Contains(ds[0]) {
		t.Errorf("unbounded again: %v", err)
	}
}
