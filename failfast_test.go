package dockerproxy_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-dockerproxy/dockerproxy"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestNegativeTTLFromTheCaddyfile: negative_ttl in the cache block reaches
// the cache: a missing tag's 404 is answered again without asking the
// upstream, until negative_ttl has passed.
func TestNegativeTTLFromTheCaddyfile(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "1", 1, 1024)
	e := startProxy(t, up, cachedBlock("negative_ttl 30s"))
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	if resp, _ := e.get("GET", "/v2/team/app/manifests/next", tok, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a missing tag: %d", resp.StatusCode)
	}
	asked := up.Counters.ManifestGETsFor("team/app")
	resp, body := e.get("GET", "/v2/team/app/manifests/next", tok, nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "MANIFEST_UNKNOWN") ||
		resp.Header.Get("Cache-Status") != "docker_proxy; hit; detail=negative" {
		t.Errorf("the missing tag again: %d %q %s", resp.StatusCode, resp.Header.Get("Cache-Status"), body)
	}
	if n := up.Counters.ManifestGETsFor("team/app") - asked; n != 0 {
		t.Errorf("%d manifest GETs for the missing tag again, want 0", n)
	}
	dockerproxy.AdvanceClock(31 * time.Second)
	e.get("GET", "/v2/team/app/manifests/next", tok, nil)
	if n := up.Counters.ManifestGETsFor("team/app") - asked; n != 1 {
		t.Errorf("%d manifest GETs after negative_ttl, want 1", n)
	}
}

// TestRateLimitPauseThroughCaddy: through Caddy, a 429 pauses the
// site's identity at once, says so once in the log, and the next miss is
// answered 429 with Retry-After without asking the upstream.
func TestRateLimitPauseThroughCaddy(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "1", 1, 1024)
	up.PushRandomImage(t, "team/app", "2", 1, 1024)
	e := startProxy(t, up, cachedBlock("tag_ttl 1h"))
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	up.Faults.RateLimit(true, 20*time.Second)
	defer up.Faults.Reset()
	resp, _ := e.get("GET", "/v2/team/app/manifests/1", tok, nil)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("the upstream's 429: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	before := up.Counters.RegistryRequests()
	resp, body := e.get("GET", "/v2/team/app/manifests/2", tok, nil)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "TOOMANYREQUESTS") || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a miss during the pause: %d, Retry-After %q, %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if n := up.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("%d upstream requests during the pause, want 0", n)
	}
	if !e.logContains("every request of this identity paused") {
		t.Error("the pause is not in the log")
	}
	dockerproxy.AdvanceClock(21 * time.Second)
	up.Faults.RateLimit(false, 0)
	if resp, _ := e.get("GET", "/v2/team/app/manifests/2", tok, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("after the pause: %d", resp.StatusCode)
	}
}
