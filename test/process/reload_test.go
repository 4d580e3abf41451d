//go:build linux

package process

import (
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestReloadDuringTransfers runs `caddy reload` with a changed config while
// ten blob transfers (ten fills) are in progress: all ten complete with the
// right bytes, their entries are committed and survive the reload, and so
// does an entry committed before it.
func TestReloadDuringTransfers(t *testing.T) {
	skipUnlessLong(t)
	up := testupstream.Start(t, testupstream.Options{})
	home := t.TempDir()
	cacheDir := filepath.Join(t.TempDir(), "cache")
	cfg := siteConfig{Upstream: up.URL, CacheDir: cacheDir, TagTTL: "5m", MaxSize: "4GiB",
		Extra: "header X-Config-Generation 1"}

	const repo = "team/reload"
	const n, size = 10, 16 << 20
	var blobs []*testupstream.GeneratedBlob
	for i := range n {
		_, g := up.PushGeneratedImage(t, repo, fmt.Sprintf("v%d", i), int64(2000+i), size)
		blobs = append(blobs, g)
	}
	small := up.PushRandomImage(t, "team/small", "v1", 1, 4<<10)
	smallDigest, _ := small.Digest()
	smallRaw, _ := small.RawManifest()

	p := startCaddy(t, home, cfg)
	c := newClient(p)
	wantComplete(t, "small manifest", c.fetch("team/small", "manifests/v1"), smallDigest.String(), int64(len(smallRaw)), statusMiss)

	// Every body stops after holdAt bytes until the reload is done, so the
	// reload happens while all ten transfers are in progress; after the
	// hold they go on slowly, so they also outlive the old server's
	// shutdown and the old handlers' cleanup.
	const holdAt = 2 << 20
	hold := up.Faults.HoldBlobs(holdAt)
	defer hold.Release()
	up.Faults.SlowBlobs(8 << 20)
	results := make([]fetched, n)
	var wg sync.WaitGroup
	for i, g := range blobs {
		wg.Go(func() { results[i] = c.fetch(repo, "blobs/"+g.Digest.String()) })
	}
	waitFor(t, "ten bodies paused at the hold point", func() bool { return hold.Paused() == n })

	reloaded := cfg
	reloaded.TagTTL = "10m"
	reloaded.Extra = "header X-Config-Generation 2"
	p.Reload(reloaded)
	// The new config serves new requests.
	resp, err := http.Get(p.URL("/v2/"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if g := resp.Header.Get("X-Config-Generation"); g != "2" {
		t.Fatalf("after reload a new request got X-Config-Generation %q, want 2", g)
	}
	if !p.running() {
		t.Fatal("caddy exited on reload")
	}
	hold.Release()
	wg.Wait()
	up.Faults.SlowBlobs(0)

	for i, g := range blobs {
		r := results[i]
		wantComplete(t, fmt.Sprintf("transfer %d across the reload", i), r, g.Digest.String(), size, statusMiss)
		if r.Header != nil && r.Header.Get("X-Config-Generation") != "1" {
			t.Errorf("transfer %d: X-Config-Generation %q, want 1 (it started before the reload)", i, r.Header.Get("X-Config-Generation"))
		}
		if got := up.Counters.ObjectStoreGETsFor(g.Digest.String()); got != 1 {
			t.Errorf("blob %d: %d upstream fetches, want 1", i, got)
		}
	}
	// Each entry is committed a moment after its client has the last byte.
	waitFor(t, "tmp/ empty after the transfers", func() bool {
		return len(tempFiles(t, filepath.Join(cacheDir, "tmp"))) == 0
	})

	// The entries filled across the reload, and the one from before it,
	// are hits of the new config; nothing more goes upstream.
	before := snapshot(up)
	for i, g := range blobs {
		r := c.fetch(repo, "blobs/"+g.Digest.String())
		wantComplete(t, fmt.Sprintf("blob %d after the reload", i), r, g.Digest.String(), size, statusHit)
		if r.Header != nil && r.Header.Get("X-Config-Generation") != "2" {
			t.Errorf("blob %d after the reload: X-Config-Generation %q, want 2", i, r.Header.Get("X-Config-Generation"))
		}
	}
	wantComplete(t, "small manifest after the reload", c.fetch("team/small", "manifests/v1"), smallDigest.String(), int64(len(smallRaw)), statusHit)
	if diff := snapshot(up).sub(before); diff != (counts{}) {
		t.Errorf("hits after the reload reached the upstream: %+v", diff)
	}
	if !p.running() {
		t.Fatal("caddy exited")
	}
}

// TestReloadMovingCacheDuringTransfers reloads with the cache in another
// directory while ten transfers are in progress. A reload is graceful in
// Caddy: requests the old config accepted run to their end. So the ten
// transfers must complete with the right bytes even though the old cache
// directory is no longer used by the new config.
func TestReloadMovingCacheDuringTransfers(t *testing.T) {
	skipUnlessLong(t)
	up := testupstream.Start(t, testupstream.Options{})
	home := t.TempDir()
	oldDir := filepath.Join(t.TempDir(), "cache")
	newDir := filepath.Join(t.TempDir(), "cache")
	cfg := siteConfig{Upstream: up.URL, CacheDir: oldDir, TagTTL: "5m", MaxSize: "4GiB"}

	const repo = "team/moving"
	const n, size = 10, 16 << 20
	var blobs []*testupstream.GeneratedBlob
	for i := range n {
		_, g := up.PushGeneratedImage(t, repo, fmt.Sprintf("v%d", i), int64(4000+i), size)
		blobs = append(blobs, g)
	}

	p := startCaddy(t, home, cfg)
	c := newClient(p)
	const holdAt = 2 << 20
	hold := up.Faults.HoldBlobs(holdAt)
	defer hold.Release()
	results := make([]fetched, n)
	var wg sync.WaitGroup
	for i, g := range blobs {
		wg.Go(func() { results[i] = c.fetch(repo, "blobs/"+g.Digest.String()) })
	}
	waitFor(t, "ten bodies paused at the hold point", func() bool { return hold.Paused() == n })

	moved := cfg
	moved.CacheDir = newDir
	p.Reload(moved)
	hold.Release()
	wg.Wait()

	for i, g := range blobs {
		wantComplete(t, fmt.Sprintf("transfer %d across the reload", i), results[i], g.Digest.String(), size, statusMiss)
	}
	// The new config caches in the new directory.
	g := blobs[0]
	wantComplete(t, "blob after the reload", c.fetch(repo, "blobs/"+g.Digest.String()), g.Digest.String(), size, "")
	wantComplete(t, "blob again after the reload", c.fetch(repo, "blobs/"+g.Digest.String()), g.Digest.String(), size, statusHit)
	if found := filesNamed(t, newDir, g.Digest.Hex); len(found) == 0 {
		t.Errorf("blob %s not stored in the new cache directory", g.Digest)
	}
	if !p.running() {
		t.Fatal("caddy exited")
	}
}
