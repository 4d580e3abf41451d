//go:build linux

package process

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// Memory test parameters: the 50 clients pulling a 1 GiB blob
// (about 70 s on a 2-core machine). DOCKER_PROXY_MEM_BLOB_MIB=256 makes
// the blob smaller for a quick run; a body buffered in memory shows at 256
// MiB as well, and garbage made per chunk served is caught at any size by
// the allocation check (allocPerServed).
const (
	memClients  = 50
	memLimit    = 150 << 20
	memBlobSize = 1 << 30
	// hashingClients of the clients hash what they read; the others count
	// bytes (hashing 50 blobs would only measure the test's CPU).
	hashingClients = 2
	// allocPerServed bounds the heap bytes Caddy may allocate per byte it
	// serves (1/allocPerServed). Streaming through reused buffers
	// allocates a few KiB per request whatever the size; a fresh buffer
	// per chunk allocates a fixed fraction of every byte, which is what
	// makes the peak RSS grow with blob size and client count.
	allocPerServed = 16
)

func memBlob() int64 {
	if mib, err := strconv.ParseInt(os.Getenv("DOCKER_PROXY_MEM_BLOB_MIB"), 10, 64); err == nil && mib > 0 {
		return mib << 20
	}
	return memBlobSize
}

// TestPeakRSSManyClients pulls one big blob with 50 concurrent clients
// through a cold cache (one upstream fetch that all of them join), then,
// in a fresh process on the same cache, through a warm one (50 hits), and
// checks the Caddy process's peak RSS (VmHWM) after each, and how much it
// allocated on its heap per byte served.
func TestPeakRSSManyClients(t *testing.T) {
	skipUnlessLong(t)
	size := memBlob()
	up := testupstream.Start(t, testupstream.Options{})
	home := t.TempDir()
	cacheDir := filepath.Join(t.TempDir(), "cache")
	cfg := siteConfig{Upstream: up.URL, CacheDir: cacheDir, TagTTL: "5m", MaxSize: "4GiB"}
	const repo = "team/huge"
	_, g := up.PushGeneratedImage(t, repo, "v1", 3000, size)
	digest := g.Digest.String()
	t.Logf("%d clients, blob of %d MiB", memClients, size>>20)

	// Cold: the first client's fill is held after holdAt bytes until all
	// the others have joined it, so every client streams from the one
	// upstream fetch.
	cold := startCaddy(t, home, cfg)
	idle := cold.VmHWM()
	t.Logf("idle: VmHWM %.1f MiB", float64(idle)/(1<<20))
	c := newClient(cold)
	if _, err := c.token(repo); err != nil {
		t.Fatal(err)
	}
	before := up.Counters.BlobBytes()
	ms := cold.memStats()
	const holdAt = 1 << 20
	hold := up.Faults.HoldBlobs(holdAt)
	defer hold.Release()
	results := pullConcurrently(t, c, repo, digest, memClients, func() {
		waitFor(t, "the first body paused at the hold point", func() bool { return hold.Paused() == 1 })
	}, hold.Release)
	for i, r := range results {
		want := statusJoined
		if i == 0 {
			want = statusMiss
		}
		wantComplete(t, fmt.Sprintf("cold client %d", i), r, digest, size, want)
	}
	if n := up.Counters.ObjectStoreGETsFor(digest); n != 1 {
		t.Errorf("cold: %d upstream fetches of the blob, want 1", n)
	}
	if n := up.Counters.BlobBytes() - before; n != size {
		t.Errorf("cold: the upstream sent %d blob bytes, want %d (one blob)", n, size)
	}
	checkAllocations(t, "cold", ms, cold.memStats(), memClients*size)
	coldHWM := cold.VmHWM()
	t.Logf("cold: VmHWM %.1f MiB (pid %d)", float64(coldHWM)/(1<<20), cold.PID)
	if coldHWM >= memLimit {
		t.Errorf("cold: Caddy's peak RSS is %d MiB, want < %d MiB", coldHWM>>20, memLimit>>20)
	}
	cold.Kill()

	// Warm: a new process on the same cache; every client is a hit.
	warm := startCaddy(t, home, cfg)
	c = newClient(warm)
	if _, err := c.token(repo); err != nil {
		t.Fatal(err)
	}
	snap := snapshot(up)
	ms = warm.memStats()
	results = pullConcurrently(t, c, repo, digest, memClients, nil, nil)
	checkAllocations(t, "warm", ms, warm.memStats(), memClients*size)
	for i, r := range results {
		wantComplete(t, fmt.Sprintf("warm client %d", i), r, digest, size, statusHit)
	}
	if diff := snapshot(up).sub(snap); diff != (counts{}) {
		t.Errorf("warm: hits reached the upstream: %+v", diff)
	}
	warmHWM := warm.VmHWM()
	t.Logf("warm: VmHWM %.1f MiB (pid %d)", float64(warmHWM)/(1<<20), warm.PID)
	if warmHWM >= memLimit {
		t.Errorf("warm: Caddy's peak RSS is %d MiB, want < %d MiB", warmHWM>>20, memLimit>>20)
	}
}

// pullConcurrently GETs the blob with n clients. If afterFirst is set, the
// first client's response headers are awaited, then afterFirst runs, then
// the other clients start and their headers are awaited, then release
// runs (it must be set too); only then are bodies read. The first hashingClients clients hash
// the body, the others count it.
func pullConcurrently(t *testing.T, c *client, repo, digest string, n int, afterFirst, release func()) []fetched {
	t.Helper()
	results := make([]fetched, n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type started struct {
		i    int
		resp *http.Response
		err  error
	}
	heads := make(chan started, n)
	startOne := func(i int) {
		go func() {
			resp, err := c.get(ctx, repo, "blobs/"+digest)
			heads <- started{i, resp, err}
		}()
	}
	var wg sync.WaitGroup
	body := func(s started) {
		if s.err != nil {
			results[s.i] = fetched{Err: s.err}
			return
		}
		wg.Go(func() {
			defer s.resp.Body.Close()
			results[s.i] = readBody(s.resp, s.i < hashingClients)
		})
	}
	var pending []started
	if afterFirst != nil {
		startOne(0)
		first := <-heads
		if first.err != nil || first.resp.StatusCode != http.StatusOK {
			// Nothing to join: report it as it is.
			release()
			body(first)
			wg.Wait()
			return results
		}
		afterFirst()
		pending = append(pending, first)
		for i := 1; i < n; i++ {
			startOne(i)
		}
		// All headers first: every client has joined before the fill
		// may go on.
		for range n - 1 {
			pending = append(pending, <-heads)
		}
		release()
		for _, s := range pending {
			body(s)
		}
	} else {
		for i := range n {
			startOne(i)
		}
		for range n {
			body(<-heads)
		}
	}
	wg.Wait()
	return results
}

// checkAllocations checks that serving `served` bytes allocated less than
// served/allocPerServed bytes on Caddy's heap (Go runtime counters, not
// timings).
func checkAllocations(t *testing.T, phase string, before, after goMemStats, served int64) {
	t.Helper()
	alloc := int64(after.TotalAlloc - before.TotalAlloc)
	t.Logf("%s: Caddy allocated %d MiB on its heap while serving %d MiB (%.3f bytes per byte served), %d GCs",
		phase, alloc>>20, served>>20, float64(alloc)/float64(served), after.NumGC-before.NumGC)
	if alloc >= served/allocPerServed {
		t.Errorf("%s: Caddy allocated %d MiB while serving %d MiB: more than 1/%d of the bytes served, so memory use grows with the transfer",
			phase, alloc>>20, served>>20, allocPerServed)
	}
}
