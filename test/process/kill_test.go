//go:build linux

package process

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestSIGKILLMidFill kills Caddy (SIGKILL) while three fills are in
// progress and starts it again on the same cache directory: the temp files
// of the interrupted fills are gone, nothing of them is served, the
// entries committed before the kill are hits without any upstream request,
// and the interrupted blobs are fetched again, complete and correct.
func TestSIGKILLMidFill(t *testing.T) {
	skipUnlessLong(t)
	up := testupstream.Start(t, testupstream.Options{})
	home := t.TempDir()
	cacheDir := filepath.Join(t.TempDir(), "cache")
	cfg := siteConfig{Upstream: up.URL, CacheDir: cacheDir, TagTTL: "5m", MaxSize: "4GiB"}

	const smallRepo, bigRepo = "team/small", "team/big"
	small := up.PushRandomImage(t, smallRepo, "v1", 2, 4<<10)
	const bigSize = 64 << 20
	var bigs []*testupstream.GeneratedBlob
	for i := range 3 {
		_, g := up.PushGeneratedImage(t, bigRepo, fmt.Sprintf("v%d", i), int64(1000+i), bigSize)
		bigs = append(bigs, g)
	}

	// First life: pull the small image completely (manifest by tag, then
	// every blob), so that it is committed.
	first := startCaddy(t, home, cfg)
	c := newClient(first)
	smallDigest, err := small.Digest()
	if err != nil {
		t.Fatal(err)
	}
	type blob struct {
		digest string
		size   int64
	}
	var smallBlobs []blob
	cfgName, _ := small.ConfigName()
	rawCfg, _ := small.RawConfigFile()
	smallBlobs = append(smallBlobs, blob{cfgName.String(), int64(len(rawCfg))})
	layers, err := small.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, _ := l.Digest()
		n, _ := l.Size()
		smallBlobs = append(smallBlobs, blob{d.String(), n})
	}
	rawManifest, _ := small.RawManifest()
	wantComplete(t, "small manifest", c.fetch(smallRepo, "manifests/v1"), smallDigest.String(), int64(len(rawManifest)), statusMiss)
	for _, b := range smallBlobs {
		wantComplete(t, "small blob "+b.digest, c.fetch(smallRepo, "blobs/"+b.digest), b.digest, b.size, statusMiss)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Three fills, each held by the upstream after holdAt bytes.
	const holdAt = 8 << 20
	hold := up.Faults.HoldBlobs(holdAt)
	defer hold.Release()
	results := make([]fetched, len(bigs))
	var wg sync.WaitGroup
	for i, g := range bigs {
		wg.Go(func() { results[i] = c.fetch(bigRepo, "blobs/"+g.Digest.String()) })
	}
	waitFor(t, "three bodies paused at the hold point", func() bool { return hold.Paused() == int64(len(bigs)) })
	tmpDir := filepath.Join(cacheDir, "tmp")
	// Caddy writes what it received, but for the last byte, which a fill
	// keeps out of its file until more comes: wait until each temp file
	// holds that.
	waitFor(t, "three temp files of the held size", func() bool {
		n := 0
		for name, size := range tempFiles(t, tmpDir) {
			if strings.HasPrefix(name, "fill-") && size == holdAt-1 {
				n++
			}
		}
		return n == len(bigs)
	})

	first.Kill()
	wg.Wait()
	for i, r := range results {
		// The clients were cut off: they must see an error, never a clean
		// end of a short body.
		if r.Err == nil {
			t.Errorf("client %d of blob %s: clean end after %d bytes (status %d) although Caddy was killed", i, bigs[i].Digest, r.N, r.Status)
		}
		if r.N >= bigSize {
			t.Errorf("client %d got %d bytes before the kill, want fewer than %d", i, r.N, bigSize)
		}
	}
	left := tempFiles(t, tmpDir)
	fills := 0
	for name := range left {
		if strings.HasPrefix(name, "fill-") {
			fills++
		}
	}
	if fills != len(bigs) {
		t.Fatalf("after SIGKILL the cache's tmp/ holds %v, want %d partial fill files", left, len(bigs))
	}
	t.Logf("after SIGKILL: tmp/ holds %v", left)
	// The upstream sees the dead connections and stops each held body.
	// Releasing the hold before that would let a body write one more chunk
	// into the dead socket, which the counters would charge to the second
	// life.
	waitFor(t, "the upstream to drop the held bodies", func() bool { return hold.Paused() == 0 })
	hold.Release()

	// Second life: same cache directory and data directory, new ports.
	before := snapshot(up)
	second := startCaddy(t, home, cfg)
	c = newClient(second)
	if left := tempFiles(t, tmpDir); len(left) != 0 {
		t.Errorf("after restart tmp/ still holds %v", left)
	}
	for _, g := range bigs {
		if found := filesNamed(t, cacheDir, g.Digest.Hex); len(found) != 0 {
			t.Errorf("after restart the interrupted blob %s has files in the cache: %v", g.Digest, found)
		}
	}

	// What was committed is still there: hits, nothing asked upstream.
	wantComplete(t, "small manifest after restart", c.fetch(smallRepo, "manifests/v1"), smallDigest.String(), int64(len(rawManifest)), statusHit)
	wantComplete(t, "small manifest by digest after restart", c.fetch(smallRepo, "manifests/"+smallDigest.String()), smallDigest.String(), int64(len(rawManifest)), statusHit)
	for _, b := range smallBlobs {
		wantComplete(t, "small blob after restart "+b.digest, c.fetch(smallRepo, "blobs/"+b.digest), b.digest, b.size, statusHit)
	}
	if diff := snapshot(up).sub(before); diff != (counts{}) {
		t.Errorf("hits after restart reached the upstream: %+v", diff)
	}

	// The interrupted blobs are fetched again, in full and correct, then hit.
	for _, g := range bigs {
		gets := up.Counters.ObjectStoreGETsFor(g.Digest.String())
		wantComplete(t, "big blob after restart "+g.Digest.String(), c.fetch(bigRepo, "blobs/"+g.Digest.String()), g.Digest.String(), g.Size, statusMiss)
		if n := up.Counters.ObjectStoreGETsFor(g.Digest.String()) - gets; n != 1 {
			t.Errorf("big blob %s: %d upstream fetches after restart, want 1", g.Digest, n)
		}
	}
	before = snapshot(up)
	for _, g := range bigs {
		wantComplete(t, "big blob again "+g.Digest.String(), c.fetch(bigRepo, "blobs/"+g.Digest.String()), g.Digest.String(), g.Size, statusHit)
	}
	if diff := snapshot(up).sub(before); diff != (counts{}) {
		t.Errorf("hits of the refilled blobs reached the upstream: %+v", diff)
	}
	// The hits above found the refills committed: nothing is left in tmp/.
	if left := tempFiles(t, tmpDir); len(left) != 0 {
		t.Errorf("after the refills tmp/ holds %v", left)
	}
}

// counts is what the upstream served that a cache hit must not cause.
type counts struct {
	ManifestGETs, ManifestHEADs, BlobGETs, BlobHEADs, ObjectStoreGETs, BlobBytes int64
}

func snapshot(up *testupstream.Upstream) counts {
	c := up.Counters
	return counts{c.ManifestGETs(), c.ManifestHEADs(), c.BlobGETs(), c.BlobHEADs(), c.ObjectStoreGETs(), c.BlobBytes()}
}

func (a counts) sub(b counts) counts {
	return counts{a.ManifestGETs - b.ManifestGETs, a.ManifestHEADs - b.ManifestHEADs, a.BlobGETs - b.BlobGETs,
		a.BlobHEADs - b.BlobHEADs, a.ObjectStoreGETs - b.ObjectStoreGETs, a.BlobBytes - b.BlobBytes}
}
