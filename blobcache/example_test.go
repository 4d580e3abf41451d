package blobcache_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

// A miss filled once from the upstream while two requests stream it: the
// first to Join leads and hands the upstream body to the fill, the second
// joins the same fill and reads it as it is written. Both readers see the
// end of the blob only once its size and digest are verified and the entry
// is committed, so the next request for the digest is a hit.
func Example_fill() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "blobcache-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	s, err := blobcache.Open(blobcache.Options{Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	layer := []byte("the bytes of a layer, as the upstream sends them")
	d := digest.FromBytes(layer)

	// 1. The first request misses.
	if _, err := s.Get(d); errors.Is(err, blobcache.ErrNotFound) {
		fmt.Println("get: miss")
	}

	// 2. It joins the fill for d and, as the first, leads it: it asks the
	// upstream and hands the response body to the fill. StartReading also
	// gives it a Reader attached before the copy begins.
	fill, leader := s.Join(d)
	fmt.Println("first join: leader =", leader)
	upstream, send := io.Pipe() // stands for the upstream response body
	mine, err := fill.StartReading(ctx, blobcache.Source{
		Body:      upstream,
		Size:      int64(len(layer)),
		MediaType: "application/vnd.oci.image.layer.v1.tar",
	})
	if err != nil {
		// The cache cannot take it (disk full, ...): the leader would
		// stream the body to its client uncached.
		log.Fatal(err)
	}
	defer mine.Close()

	// The upstream has sent part of the blob when a second request comes.
	if _, err := send.Write(layer[:10]); err != nil {
		log.Fatal(err)
	}

	// 3. The second request joins the same fill as a follower: no second
	// upstream request, it streams what the leader's fetch writes.
	same, leader := s.Join(d)
	fmt.Println("second join: leader =", leader, "same fill =", same == fill)
	theirs, err := same.Reader(ctx)
	if err != nil {
		// The fill failed: a follower makes its own upstream request.
		log.Fatal(err)
	}
	defer theirs.Close()

	// The rest of the body arrives.
	go func() {
		_, err := send.Write(layer[10:])
		send.CloseWithError(err) // nil: a clean end of the body
	}()

	// 4. Both read to the end. io.EOF comes only once every byte was
	// checked against the size and the digest and the entry committed.
	for _, r := range []*blobcache.Reader{mine, theirs} {
		got, err := io.ReadAll(r)
		fmt.Printf("read %d bytes, err = %v, same bytes = %v\n", len(got), err, string(got) == string(layer))
	}

	// 5. The next request is a hit, served from the committed file.
	b, err := s.Get(d)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	fmt.Println("get: hit,", b.Size, "bytes,", b.MediaType)

	// Output:
	// get: miss
	// first join: leader = true
	// second join: leader = false same fill = true
	// read 48 bytes, err = <nil>, same bytes = true
	// read 48 bytes, err = <nil>, same bytes = true
	// get: hit, 48 bytes, application/vnd.oci.image.layer.v1.tar
}

// Bytes that do not match the digest never end a read cleanly and are not
// kept: every reader of the fill gets an error, and the digest stays a miss.
func Example_digestMismatch() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "blobcache-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	s, err := blobcache.Open(blobcache.Options{Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	d := digest.FromString("what the manifest promised")
	fill, leader := s.Join(d)
	fmt.Println("leader =", leader)
	wrong := "what the upstream sent"
	r, err := fill.StartReading(ctx, blobcache.Source{
		Body: io.NopCloser(strings.NewReader(wrong)),
		Size: int64(len(wrong)),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	got, err := io.ReadAll(r)
	fmt.Println("read ends cleanly:", err == nil)
	fmt.Println("digest mismatch:", errors.Is(err, blobcache.ErrDigestMismatch))
	fmt.Println("all bytes delivered:", len(got) == len(wrong))
	_, err = s.Get(d)
	fmt.Println("get: miss =", errors.Is(err, blobcache.ErrNotFound))

	// Output:
	// leader = true
	// read ends cleanly: false
	// digest mismatch: true
	// all bytes delivered: false
	// get: miss = true
}
