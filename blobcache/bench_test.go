package blobcache

import (
	"fmt"
	"io"
	"sync"
	"testing"
)

// benchFill runs one fill of size bytes from a generated source with
// `readers` readers, each copying through a 32 KiB buffer like net/http.
func benchFill(b *testing.B, s *Store, size int64, readers int) {
	b.Helper()
	d := genDigest(size, 1)
	buf := make([][]byte, readers)
	for i := range buf {
		buf[i] = make([]byte, 32<<10)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		s.remove(d) // every iteration is a miss
		b.StartTimer()
		f, leader := s.Join(d)
		if !leader {
			b.Fatal("not leader")
		}
		if err := f.Start(Source{Body: newGenBody(size, 1), Size: size}); err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range readers {
			r, err := f.Reader(b.Context())
			if err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer r.Close()
				if _, err := io.CopyBuffer(io.Discard, onlyReader{r}, buf[i]); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
	}
}

// BenchmarkFill: one 64 MiB miss, one reader, fsync included (the default).
func BenchmarkFill(b *testing.B) {
	const size = 64 << 20
	s, err := Open(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.SetBytes(size)
	b.ReportAllocs()
	benchFill(b, s, size, 1)
}

// BenchmarkFanOut: one 16 MiB fill read by N readers at once. Bytes/op
// counts what all readers together receive.
func BenchmarkFanOut(b *testing.B) {
	const size = 16 << 20
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("readers=%d", n), func(b *testing.B) {
			s, err := Open(Options{Dir: b.TempDir(), NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			b.SetBytes(size * int64(n))
			b.ReportAllocs()
			benchFill(b, s, size, n)
		})
	}
}

// BenchmarkGet: a hit, open + read of a 1 MiB entry + close.
func BenchmarkGet(b *testing.B) {
	const size = 1 << 20
	s, err := Open(Options{Dir: b.TempDir(), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data, d := blob(size, 1)
	if err := s.Put(d, "", data); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 32<<10)
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		bl, err := s.Get(d)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(io.Discard, onlyReader{bl.File}, buf); err != nil {
			b.Fatal(err)
		}
		bl.Close()
	}
}
