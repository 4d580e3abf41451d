package dockerproxy_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// checkHealth asks host for /healthz and checks the answer: the status, a
// JSON body with the cache state, and that no upstream was asked.
func checkHealth(t *testing.T, e *proxyEnv, host string, wantStatus int, wantCache string) {
	t.Helper()
	before := e.up.Counters.RegistryRequests()
	resp, body := e.do("GET", host, "/healthz", nil)
	var got struct{ Status, Cache string }
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("GET %s/healthz: %d, body not JSON: %v: %q", host, resp.StatusCode, err, body)
	}
	wantState := "ok"
	if wantStatus != http.StatusOK {
		wantState = "unavailable"
	}
	if resp.StatusCode != wantStatus || got.Status != wantState || got.Cache != wantCache ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("GET %s/healthz = %d %s %q, want %d status %q cache %q in JSON",
			host, resp.StatusCode, resp.Header.Get("Content-Type"), body, wantStatus, wantState, wantCache)
	}
	head, headBody := e.do("HEAD", host, "/healthz", nil)
	if head.StatusCode != wantStatus || headBody != "" {
		t.Errorf("HEAD %s/healthz = %d %q, want %d without a body", host, head.StatusCode, headBody, wantStatus)
	}
	if n := e.up.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("/healthz made %d upstream requests", n)
	}
}

// TestHealthOnEveryHost: /healthz answers 200 with the cache open on a
// routed host and on one the handler does not route (which gets the route
// list for any other path), without asking the upstream; other methods
// and the paths around it keep their registry answers.
func TestHealthOnEveryHost(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	e := startProxy(t, up, strings.Replace(domainBlock, "cache off", "cache {DIR}/cache", 1))
	checkHealth(t, e, "docker.example.test", http.StatusOK, "open")
	checkHealth(t, e, "unknown.example.test", http.StatusOK, "open")

	for _, c := range []struct{ method, host, path string }{
		{"POST", "docker.example.test", "/healthz"},
		{"GET", "docker.example.test", "/healthz/"},
		{"GET", "docker.example.test", "/v2/healthz"},
	} {
		resp, body := e.do(c.method, c.host, c.path, nil)
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, `"UNSUPPORTED"`) {
			t.Errorf("%s %s%s = %d %s, want the registry's 404 UNSUPPORTED", c.method, c.host, c.path, resp.StatusCode, body)
		}
	}
	resp, body := e.do("POST", "unknown.example.test", "/healthz", nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "Available registry routes") {
		t.Errorf("POST on an unknown host = %d %s, want the route list", resp.StatusCode, body)
	}
}

// TestHealthCacheOff: with the cache off there is no cache to be
// unhealthy: the handler serves, and says so.
func TestHealthCacheOff(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	e := startProxy(t, up, `http://:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		cache off
	}
}`)
	checkHealth(t, e, "docker.example.test", http.StatusOK, "off")
}

// TestHealthCacheUnavailable: a cache directory that cannot be opened
// (a file is in its place) leaves the proxy serving from the upstream,
// and /healthz says 503, so that a readiness probe keeps it out of
// service until it is fixed.
func TestHealthCacheUnavailable(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	blocker := filepath.Join(t.TempDir(), "not-a-directory")
	if err := os.WriteFile(blocker, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startProxy(t, up, strings.Replace(cachedBlock("tag_ttl 5m"), "{DIR}/cache", blocker, 1))
	checkHealth(t, e, "docker.example.test", http.StatusServiceUnavailable, "unavailable")
}
