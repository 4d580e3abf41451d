package dockerproxy_test

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-dockerproxy/dockerproxy"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// imageBytes is what a pull of img reads: its manifest, its config and
// its layers (compressed), and what of that is blobs.
func imageBytes(t *testing.T, img v1.Image) (total, blobs float64) {
	t.Helper()
	m, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	c, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	blobs = float64(len(c))
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			t.Fatal(err)
		}
		blobs += float64(n)
	}
	return float64(len(m)) + blobs, blobs
}

// metricsSite is a Caddy config with the proxy on every host (a cache in
// {DIR}/cache) and a metrics handler at /metrics; on ghcr.example.test
// the proxy pulls with configured credentials (bob), without a cache.
const metricsSite = `http://:{PORT} {
	handle /metrics {
		metrics
	}
	handle {
		docker_proxy {UPSTREAM} {
			cache {DIR}/cache
		}
	}
}
http://ghcr.example.test:{PORT} {
	docker_proxy {UPSTREAM} {
		credentials bob bob-pw
		cache off
	}
}`

// want is one expected value of a scrape: the sum of the series called
// name that have the labels.
type want struct {
	name   string
	labels []string
	value  float64
}

func checkScrape(t *testing.T, step string, samples []sample, wants []want) {
	t.Helper()
	for _, w := range wants {
		if got := sum(samples, w.name, w.labels...); got != w.value {
			t.Errorf("%s: %s%v = %v, want %v", step, w.name, w.labels, got, w.value)
		}
	}
}

// TestMetricsScriptedTraffic drives pulls, a 429 and a down upstream
// through Caddy and checks the exact values of a /metrics scrape after
// each step: responses by kind and outcome, bytes by source, upstream
// requests by kind and status, the quota per identity, fills and the
// store.
func TestMetricsScriptedTraffic(t *testing.T) {
	const limit = 40
	up := testupstream.Start(t, testupstream.Options{RateLimit: limit})
	img := up.PushRandomImage(t, "team/app", "1", 1, 64<<10)
	up.PushRandomImage(t, "team/app", "2", 1, 1024)
	up.PushRandomImage(t, "team/app", "3", 1, 1024)
	up.SetPrivate("team/bob", "bob", "bob-pw")
	bobImg := up.PushRandomImage(t, "team/bob", "1", 1, 1024)
	up.SetPrivate("team/alice", "alice", "alice-pw")
	aliceImg := up.PushRandomImage(t, "team/alice", "1", 1, 1024)
	e := startProxy(t, up, metricsSite)
	dir := filepath.Join(filepath.Dir(e.logPath), "cache")
	total, blobs := imageBytes(t, img)
	u := "upstream=" + up.Host
	const (
		responses = "caddy_docker_proxy_responses_total"
		sent      = "caddy_docker_proxy_response_bytes_total"
		fetched   = "caddy_docker_proxy_upstream_bytes_total"
		requests  = "caddy_docker_proxy_upstream_requests_total"
		remaining = "caddy_docker_proxy_upstream_quota_remaining"
	)
	scrapeWhen := func(step string, ready func([]sample) bool) []sample {
		t.Helper()
		return e.scrapeWhen(step, ready)
	}

	// 1. A cold pull: everything from the upstream, once.
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatal(err)
	}
	// A fill is counted once committed, just after its last byte went.
	s := scrapeWhen("cold pull counted", func(s []sample) bool {
		return sum(s, responses, u, "kind=blob") == 2 && sum(s, "caddy_docker_proxy_fill_size_bytes_count", u) == 2
	})
	upstreamBytes := sum(s, fetched, u)
	checkScrape(t, "cold pull", s, []want{
		{responses, []string{u, "kind=manifest", "cache=miss"}, 1},
		{responses, []string{u, "kind=blob", "cache=miss"}, 2},
		{responses, []string{u, "cache=hit"}, 0},
		{sent, []string{u, "source=upstream"}, total},
		{sent, []string{u, "source=cache"}, 0},
		// The client's GET /v2/ has the proxy learn the upstream's
		// challenge (a 401), so the manifest goes with a token at once.
		// Blobs: each redirected (307) to the object store, with the
		// token the manifest's request got.
		{requests, []string{u, "kind=base", "status=4xx"}, 1},
		{requests, []string{u, "kind=manifest", "status=4xx"}, 0},
		{requests, []string{u, "kind=manifest", "status=2xx"}, 1},
		{requests, []string{u, "kind=token", "status=2xx"}, 1},
		{requests, []string{u, "kind=blob", "status=3xx"}, 2},
		{requests, []string{u, "kind=blob", "status=2xx"}, 2},
		{"caddy_docker_proxy_upstream_quota_limit", []string{u, "identity=anonymous"}, limit},
		{remaining, []string{u, "identity=anonymous"}, limit - 1},
		{"caddy_docker_proxy_upstream_quota_window_seconds", []string{u, "identity=anonymous"}, 21600},
		{"caddy_docker_proxy_fill_size_bytes_count", []string{u}, 2},
		{"caddy_docker_proxy_fill_size_bytes_sum", []string{u}, blobs},
		{"caddy_docker_proxy_fill_duration_seconds_count", []string{u}, 2},
		{"caddy_docker_proxy_cache_entries", []string{"dir=" + dir}, 3},
		{"caddy_docker_proxy_cache_tag_records", []string{"dir=" + dir}, 1},
		{"caddy_docker_proxy_fills_in_progress", []string{"dir=" + dir}, 0},
		{"caddy_docker_proxy_cache_evictions_total", []string{"dir=" + dir}, 0},
		{"caddy_docker_proxy_shared_tier_errors_total", []string{"dir=" + dir}, 0},
	})
	// What came from the upstream is the content, and the few small
	// bodies around it (the 401's error, the token, the redirects').
	if upstreamBytes < total || upstreamBytes > total+8<<10 {
		t.Errorf("cold pull: %s = %v, want the content's %v and at most 8 KiB more", fetched, upstreamBytes, total)
	}
	// The store holds the three entries and the tag record (a block).
	if b := sum(s, "caddy_docker_proxy_cache_bytes", "dir="+dir); b != total+4096 {
		t.Errorf("cold pull: cache_bytes = %v, want %v", b, total+4096)
	}

	// 2. A warm pull: everything from the cache, nothing upstream.
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatal(err)
	}
	s = scrapeWhen("warm pull counted", func(s []sample) bool { return sum(s, responses, u, "kind=blob", "cache=hit") == 2 })
	checkScrape(t, "warm pull", s, []want{
		{responses, []string{u, "kind=manifest", "cache=hit"}, 1},
		{sent, []string{u, "source=cache"}, total},
		{sent, []string{u, "source=upstream"}, total},
		{fetched, []string{u}, upstreamBytes},
		{requests, []string{u}, 7},
	})

	// 3. The quota of each identity: configured credentials (bob) on
	// ghcr.example.test, a client's own (alice) on docker.example.test.
	if err := e.pullImage(e.ref("ghcr.example.test", "team/bob:1"), nil, bobImg); err != nil {
		t.Fatal(err)
	}
	if err := e.pullImage(e.ref("docker.example.test", "team/alice:1"), &authn.Basic{Username: "alice", Password: "alice-pw"}, aliceImg); err != nil {
		t.Fatal(err)
	}
	s = scrapeWhen("the quotas", func(s []sample) bool { return sum(s, remaining, u, "identity=client") > 0 })
	checkScrape(t, "quotas", s, []want{
		{remaining, []string{u, "identity=anonymous"}, limit - 1},
		{remaining, []string{u, "identity=bob"}, limit - 2},
		{remaining, []string{u, "identity=client"}, limit - 3},
		{"caddy_docker_proxy_upstream_quota_limit", []string{u}, 3 * limit},
		// Tokens from the realm: the cold pull's, bob's (the proxy's
		// credentials), alice's login at the proxy's token endpoint.
		{requests, []string{u, "kind=token", "status=2xx"}, 3},
	})
	before := s

	// 4. A 429: counted apart, and the quota it reports (0 left).
	up.Faults.RateLimit(true, 30*time.Second)
	if resp, _ := e.do("GET", "docker.example.test", "/v2/team/app/manifests/2", nil); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("rate-limited manifest: %d, want 429", resp.StatusCode)
	}
	up.Faults.RateLimit(false, 0)
	s = scrapeWhen("the 429", func(s []sample) bool { return sum(s, responses, u, "cache=error") == 1 })
	checkScrape(t, "429", s, []want{
		{requests, []string{u, "kind=manifest", "status=429"}, 1},
		{requests, []string{u}, sum(before, requests, u) + 1},
		{remaining, []string{u, "identity=anonymous"}, 0},
	})

	// 5. A down upstream: a failure to connect, counted apart. (Past the
	// 429's Retry-After first: until then the proxy sends nothing.)
	dockerproxy.AdvanceClock(31 * time.Second)
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	resp, _ := e.do("GET", "docker.example.test", "/v2/team/app/manifests/3", nil)
	if err := up.Faults.SetDown(false); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode < 500 {
		t.Fatalf("manifest with the upstream down: %d, want 5xx", resp.StatusCode)
	}
	s = scrapeWhen("the down upstream", func(s []sample) bool { return sum(s, responses, u, "cache=error") == 2 })
	checkScrape(t, "down", s, []want{
		{requests, []string{u, "kind=manifest", "status=connect_error"}, 1},
		{requests, []string{u, "status=error"}, 0},
		{requests, []string{u}, sum(before, requests, u) + 2},
	})
	if t.Failed() {
		t.Logf("scrape:\n%s", dumpSamples(s, "docker_proxy"))
	}
}

// scrapeWhen scrapes until ready holds, then once more, and returns that
// last scrape. A response is counted just after the client has it, and
// a fill just after its last byte went: ready waits for the last count
// of a step. A scrape reads the collectors concurrently, so it may see a
// count but not what was recorded just before it (the response's bytes,
// the fill's duration); the next scrape sees both.
func (e *proxyEnv) scrapeWhen(step string, ready func([]sample) bool) []sample {
	e.t.Helper()
	waitUntil(e.t, step, func() bool { return ready(e.scrape("docker.example.test")) })
	return e.scrape("docker.example.test")
}

// dumpSamples prints the series whose name contains substr.
func dumpSamples(samples []sample, substr string) string {
	var b strings.Builder
	for _, s := range samples {
		if strings.Contains(s.name, substr) {
			fmt.Fprintf(&b, "%s%v %v\n", s.name, s.labels, s.value)
		}
	}
	return b.String()
}

// TestMetricsKeptAcrossReload: Caddy gives every config a metrics registry
// of its own; the counts go on across a reload all the same, from where
// they were, and the store's series are not doubled while two configs
// share it.
func TestMetricsKeptAcrossReload(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 4096)
	cache := filepath.Join(t.TempDir(), "cache")
	site := func(tagTTL string) string {
		return `http://:{PORT} {
	handle /metrics {
		metrics
	}
	handle {
		docker_proxy {UPSTREAM} {
			cache ` + cache + ` {
				tag_ttl ` + tagTTL + `
			}
		}
	}
}`
	}
	u := "upstream=" + up.Host
	const responses = "caddy_docker_proxy_responses_total"
	e := startProxy(t, up, site("5m"))
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatal(err)
	}
	before := e.scrapeWhen("the pull counted", func(s []sample) bool {
		return sum(s, responses, u, "kind=blob") == 2 && sum(s, "caddy_docker_proxy_fill_size_bytes_count", u) == 2
	})

	// Another config (another port, another tag_ttl): Caddy loads it in
	// place of the first.
	e = startProxy(t, up, site("10m"))
	after := e.scrape("docker.example.test")
	for _, w := range []want{
		{responses, []string{u, "kind=manifest", "cache=miss"}, 1},
		{responses, []string{u, "kind=blob", "cache=miss"}, 2},
		{"caddy_docker_proxy_response_bytes_total", []string{u}, sum(before, "caddy_docker_proxy_response_bytes_total", u)},
		{"caddy_docker_proxy_upstream_requests_total", []string{u}, sum(before, "caddy_docker_proxy_upstream_requests_total", u)},
		{"caddy_docker_proxy_fill_size_bytes_count", []string{u}, 2},
	} {
		if got := sum(after, w.name, w.labels...); got != w.value {
			t.Errorf("after the reload: %s%v = %v, want %v (as before it)", w.name, w.labels, got, w.value)
		}
	}
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the pull after the reload counted on", func() bool {
		return sum(e.scrape("docker.example.test"), responses, u, "kind=blob", "cache=hit") == 2
	})
	s := e.scrape("docker.example.test")
	checkScrape(t, "after the reload", s, []want{
		{responses, []string{u, "kind=blob", "cache=miss"}, 2},
		{"caddy_docker_proxy_cache_entries", []string{"dir=" + cache}, 3},
	})
}
