//go:build linux

package dockerproxy_test

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestHealthDiskError: while the cache rests after a disk error (here its
// disk is full when a manifest is stored), /healthz says 503 disk_error;
// the pull itself still passes through.
func TestHealthDiskError(t *testing.T) {
	disk := smallDisk(t, 4)
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "1", 1, 1024)
	cacheDir := filepath.Join(disk, "cache")
	e := startProxy(t, up, strings.Replace(cachedBlock("tag_ttl 5m"), "{DIR}/cache", cacheDir, 1))
	checkHealth(t, e, "docker.example.test", http.StatusOK, "open")

	fillUp(t, filepath.Join(disk, "filler"))
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	resp, body := e.get("GET", "/v2/team/app/manifests/1", tok, http.Header{
		"Accept": {"application/vnd.docker.distribution.manifest.v2+json"},
	})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest with a full disk: %d %s", resp.StatusCode, body)
	}
	checkHealth(t, e, "docker.example.test", http.StatusServiceUnavailable, "disk_error")
}
