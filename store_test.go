package dockerproxy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

func TestMaxSizeEvictsLeastRecentlyUsed(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	var imgs []v1.Image
	for i := 0; i < 6; i++ {
		imgs = append(imgs, up.PushRandomImage(t, fmt.Sprintf("team/app%d", i), "1", 1, 300<<10))
	}
	e := startProxy(t, up, cachedBlock("tag_ttl 5m\n\t\t\tmax_size 1MiB"))
	blobsDir := filepath.Join(e.dataDirParent(), "cache", "blobs")
	cached := func(img v1.Image) bool {
		d := layerDigests(t, img)[0]
		for _, f := range filesUnder(t, blobsDir) {
			if filepath.Base(f) == d.Hex {
				return true
			}
		}
		return false
	}
	for i, img := range imgs {
		if i == 3 {
			// Image 0 is the oldest pull, but read again now: image 1
			// is the least recently used when image 3 needs room.
			tok := anonymousToken(t, e, "docker.example.test", "team/app0")
			if _, _, status, err := e.readBlob(blobPaths("team/app0", layerDigests(t, imgs[0]))[0], tok, nil); err != nil || status != "docker_proxy; hit" {
				t.Fatalf("re-reading image 0's layer: %v, Cache-Status %q", err, status)
			}
		}
		if err := e.pullImage(e.ref("docker.example.test", fmt.Sprintf("team/app%d:1", i)), nil, img); err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			waitUntil(t, "image 3 committed and the eviction it made", func() bool {
				return cached(imgs[3]) && dirSize(t, blobsDir) <= 1<<20
			})
			if !cached(imgs[0]) || cached(imgs[1]) {
				t.Errorf("after image 3: image 0 (read recently) cached %v, image 1 (least recently used) cached %v; want true, false",
					cached(imgs[0]), cached(imgs[1]))
			}
		}
		// The server releases the entry just after the client has the
		// last byte; eviction runs then.
		waitUntil(t, fmt.Sprintf("the cache within max_size (1 MiB) after %d images", i+1), func() bool {
			return dirSize(t, blobsDir) <= 1<<20
		})
	}
	// The most recent image is still a hit; the first one is gone.
	last := len(imgs) - 1
	tok := anonymousToken(t, e, "docker.example.test", fmt.Sprintf("team/app%d", last))
	_, _, status, err := e.readBlob(blobPaths(fmt.Sprintf("team/app%d", last), layerDigests(t, imgs[last]))[0], tok, nil)
	if err != nil || status != "docker_proxy; hit" {
		t.Errorf("most recent layer: %v, Cache-Status %q", err, status)
	}
	tok = anonymousToken(t, e, "docker.example.test", "team/app0")
	_, _, status, err = e.readBlob(blobPaths("team/app0", layerDigests(t, imgs[0]))[0], tok, nil)
	if err != nil || status == "docker_proxy; hit" {
		t.Errorf("least recent layer: %v, Cache-Status %q, want evicted", err, status)
	}
}

func TestUnwritableCacheFallsBackToUpstream(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 2, 64<<10)
	dir := t.TempDir()
	// A regular file where the cache directory should be: no write can
	// succeed, even as root.
	blocker := filepath.Join(dir, "cache")
	if err := os.WriteFile(blocker, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := startProxy(t, up, strings.Replace(cachedBlock("tag_ttl 5m"), "{DIR}/cache", blocker, 1))
	for i := 0; i < 2; i++ {
		if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
			t.Fatalf("pull %d with an unwritable cache: %v", i, err)
		}
	}
	if !e.logContains("cache unavailable") {
		t.Error("the unusable cache was not logged")
	}
}
