//go:build linux

package dockerproxy_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// smallDisk mounts a tmpfs of sizeMiB at a temporary directory: a real file
// system that fills up. It needs root (CI runs as root); elsewhere the test
// is skipped and says why.
func smallDisk(t *testing.T, sizeMiB int) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%dm", sizeMiB)); err != nil {
		t.Skipf("cannot mount a small tmpfs for the cache (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// fillUp writes a file until the file system is full.
func fillUp(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			return
		}
	}
}

// TestDiskFullMidFillServesFromUpstream: the cache's disk fills up (another
// program takes the space) while three clients read a blob being filled.
// Each client still gets every byte, verified: what the fill wrote, then
// the rest from the upstream with a Range request. Nothing half-written is
// kept, the condition is logged, and later pulls pass through uncached.
func TestDiskFullMidFillServesFromUpstream(t *testing.T) {
	disk := smallDisk(t, 160)
	up := testupstream.Start(t, testupstream.Options{})
	const size = 64 << 20
	_, blob := up.PushGeneratedImage(t, "team/big", "1", 31, size)
	cacheDir := filepath.Join(disk, "cache")
	e := startProxy(t, up, strings.Replace(cachedBlock("tag_ttl 5m"), "{DIR}/cache", cacheDir, 1))
	tok := anonymousToken(t, e, "docker.example.test", "team/big")
	path := "/v2/team/big/blobs/" + blob.Digest.String()

	const holdAt = 8 << 20
	hold := up.Faults.HoldBlobs(holdAt)
	const clients = 3
	var responded atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, clients)
	for i := range clients {
		wg.Go(func() {
			sum, n, _, err := e.readBlobCounting(path, tok, nil, &responded)
			if err == nil && (sum != blob.Digest.String() || n != size) {
				err = fmt.Errorf("got %d bytes hashing to %s", n, sum)
			}
			errs[i] = err
		})
	}
	waitUntil(t, "the clients on the fill, held by the upstream", func() bool {
		return responded.Load() == clients && hold.Paused() == 1
	})
	fillUp(t, filepath.Join(disk, "filler"))
	hold.Release()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
	// One fetch for the fill, then one Range request per client for the rest.
	if n := up.Counters.ObjectStoreGETsFor(blob.Digest.String()); n != 1+clients {
		t.Errorf("%d object store GETs, want %d (the fill and a rest per client)", n, 1+clients)
	}
	if found := filesUnder(t, cacheDir); len(found) > 0 {
		for _, f := range found {
			if strings.Contains(f, blob.Digest.Hex) || strings.Contains(f, "fill-") {
				t.Errorf("left in the cache after the disk filled up: %s", f)
			}
		}
	}
	if !e.logContains("blob cache disk error") {
		t.Error("the full disk was not logged")
	}

	// The disk is still full: the next pulls pass through, complete.
	for range 2 {
		sum, n, status, err := e.readBlob(path, tok, nil)
		if err != nil || sum != blob.Digest.String() || n != size {
			t.Fatalf("pull with a full disk: %d bytes, %s, %v", n, sum, err)
		}
		if status != "docker_proxy; fwd=bypass; detail=cache-unavailable" {
			t.Errorf("Cache-Status %q with a full disk, want the cache-unavailable bypass", status)
		}
	}
}
