package registry

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// testClock is a clock that tests move forward instead of waiting.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// newClockedProxy is newTestProxy (tag_ttl a minute) with one test clock
// for its cache (tag_ttl) and its upstream client (pauses, outages).
func newClockedProxy(t *testing.T, up *testupstream.Upstream) (*Proxy, *httptest.Server, *testClock) {
	t.Helper()
	p, srv := newTestProxy(t, up, time.Minute)
	clock := &testClock{}
	p.Cache.Now = clock.now
	p.Upstream.Now = clock.now
	return p, srv, clock
}

// manifestURL is the proxy's URL of a manifest.
func manifestURL(srvURL, repo, ref string) string {
	return srvURL + "/v2/" + repo + "/manifests/" + ref
}

const acceptImage = "application/vnd.docker.distribution.manifest.v2+json"

// registryErrorCode is the first error code of a registry JSON error body.
func registryErrorCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Errorf("not a registry error body: %q", body)
		return ""
	}
	return e.Errors[0].Code
}

// wantRetryAfter checks that resp tells the client to come back in 1 to
// max seconds.
func wantRetryAfter(t *testing.T, resp *http.Response, maxSecs int) {
	t.Helper()
	secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || secs < 1 || secs > maxSecs {
		t.Errorf("Retry-After %q, want 1 to %d seconds", resp.Header.Get("Retry-After"), maxSecs)
	}
}

// TestRateLimitPausesTheIdentity: a 429 with Retry-After pauses the
// proxy's own identity at that upstream. During the pause nothing goes
// upstream for it: a stale tag is served from the cache, a miss gets 429
// TOOMANYREQUESTS with Retry-After at once. A client with its own
// credentials is another identity, which the pause does not stop.
func TestRateLimitPausesTheIdentity(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.AddUser("carol", "carol-pw")
	up.PushRandomImage(t, "team/app", "v1", 1, 1024)
	other := up.PushRandomImage(t, "team/app", "v2", 1, 1024)
	_, srv, clock := newClockedProxy(t, up)

	if resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v1"), acceptImage); resp.StatusCode != http.StatusOK {
		t.Fatalf("first pull: %s", status(resp))
	}
	clock.advance(2 * time.Minute) // the tag is stale: it would be revalidated

	up.Faults.RateLimit(true, 30*time.Second)
	resp, body := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v2"), acceptImage)
	if resp.StatusCode != http.StatusTooManyRequests || registryErrorCode(t, body) != CodeTooManyRequests {
		t.Fatalf("the upstream's 429: %s %s", status(resp), body)
	}
	wantRetryAfter(t, resp, 30)

	// The upstream's limit is lifted, but the proxy does not know: it
	// keeps to the Retry-After it was given.
	up.Faults.RateLimit(false, 0)
	before := up.Counters.RegistryRequests()
	resp, _ = requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v1"), acceptImage)
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Cache-Status"), "stale") {
		t.Errorf("the stale tag during the pause: %s, want 200 and stale", status(resp))
	}
	for _, ref := range []string{"v2", "v3"} {
		resp, body = requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", ref), acceptImage)
		if resp.StatusCode != http.StatusTooManyRequests || registryErrorCode(t, body) != CodeTooManyRequests {
			t.Errorf("a miss (%s) during the pause: %s %s, want 429 TOOMANYREQUESTS", ref, status(resp), body)
		}
		wantRetryAfter(t, resp, 30)
	}
	layers, _ := other.Layers()
	ld, _ := layers[0].Digest()
	resp, body, _ = get(srv.URL + "/v2/team/app/blobs/" + ld.String())
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("a blob miss during the pause: %s %s, want 429", status(resp), body)
	}
	if n := up.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("%d upstream requests during the pause, want 0", n)
	}

	// Another identity: carol's own credentials.
	ref, err := name.ParseReference(path.Join(strings.TrimPrefix(srv.URL, "http://"), "team/app:v2"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Get(ref, remote.WithAuth(&authn.Basic{Username: "carol", Password: "carol-pw"})); err != nil {
		t.Errorf("another identity during the pause: %v", err)
	}
	if up.Counters.ManifestGETsFor("team/app") < 3 {
		t.Errorf("the other identity's pull did not reach the upstream: %d manifest GETs", up.Counters.ManifestGETsFor("team/app"))
	}

	// Once the pause is over, the proxy's own identity asks again.
	clock.advance(31 * time.Second)
	before = up.Counters.RegistryRequests()
	resp, _ = requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v1"), acceptImage)
	if resp.StatusCode != http.StatusOK || up.Counters.RegistryRequests() == before {
		t.Errorf("after the pause: %s with %d upstream requests, want a revalidated tag", status(resp), up.Counters.RegistryRequests()-before)
	}
}

// TestQuotaAtZeroPauses: an answer that says the quota is used up
// (ratelimit-remaining: 0) pauses the identity as a 429 does, before the
// upstream has to refuse anything.
func TestQuotaAtZeroPauses(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{RateLimit: 2})
	images := map[string]v1.Image{}
	for _, tag := range []string{"a", "b", "c"} {
		images[tag] = up.PushRandomImage(t, "team/quota", tag, 1, 512)
	}
	_, srv := newTestProxy(t, up, time.Minute)
	for _, tag := range []string{"a", "b"} {
		if resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/quota", tag), acceptImage); resp.StatusCode != http.StatusOK {
			t.Fatalf("pull of %s: %s", tag, status(resp))
		}
	}
	// The second GET left 0 of 2 in the window: the third is not sent.
	before := up.Counters.RegistryRequests()
	resp, body := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/quota", "c"), acceptImage)
	if resp.StatusCode != http.StatusTooManyRequests || registryErrorCode(t, body) != CodeTooManyRequests {
		t.Errorf("with the quota at 0: %s %s, want 429", status(resp), body)
	}
	// window/limit is 3 h, bounded by maxPause.
	wantRetryAfter(t, resp, int(maxPause/time.Second))
	if n := up.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("%d upstream requests with the quota at 0, want 0", n)
	}
	if resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/quota", "a"), acceptImage); resp.StatusCode != http.StatusOK {
		t.Errorf("a fresh tag with the quota at 0: %s, want it from the cache", status(resp))
	}
	// The quota counts manifest GETs only: a layer still comes.
	layers, err := images["c"].Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := http.Get(srv.URL + "/v2/team/quota/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	blob.Body.Close()
	if blob.StatusCode != http.StatusOK {
		t.Errorf("a layer with the quota at 0: %s, want it fetched (blobs do not count against the quota)", status(blob))
	}
}

// TestPauseUntil: which answers pause, and for how long.
func TestPauseUntil(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		name   string
		status int
		header map[string]string
		want   time.Duration // 0: no pause
	}{
		{"200 with quota left", 200, map[string]string{"Ratelimit-Limit": "100;w=21600", "Ratelimit-Remaining": "3;w=21600"}, 0},
		{"200 without quota headers", 200, nil, 0},
		{"429 with seconds", 429, map[string]string{"Retry-After": "42"}, 42 * time.Second},
		{"429 with a date", 429, map[string]string{"Retry-After": now.Add(90 * time.Second).Format(http.TimeFormat)}, 90 * time.Second},
		{"429 without Retry-After", 429, nil, defaultPause},
		{"429 with a bad Retry-After", 429, map[string]string{"Retry-After": "soon"}, defaultPause},
		{"429 with a Retry-After beyond the bound", 429, map[string]string{"Retry-After": "999999999999"}, maxPause},
		{"quota 0 of 100 per 6 h", 200, map[string]string{"Ratelimit-Limit": "100;w=21600", "Ratelimit-Remaining": "0;w=21600"}, 216 * time.Second},
		{"quota 0 of 10 per hour", 200, map[string]string{"Ratelimit-Limit": "10;w=3600", "Ratelimit-Remaining": "0;w=3600"}, 360 * time.Second},
		{"quota 0 with Retry-After", 200, map[string]string{"Ratelimit-Limit": "10;w=3600", "Ratelimit-Remaining": "0", "Retry-After": "5"}, 5 * time.Second},
		{"quota 0 without a window", 200, map[string]string{"Ratelimit-Limit": "10", "Ratelimit-Remaining": "0"}, defaultPause},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: c.status, Header: http.Header{}}
			for k, v := range c.header {
				resp.Header.Set(k, v)
			}
			until, all, ok := pauseUntil(resp, now)
			switch {
			case c.want == 0 && ok:
				t.Errorf("paused until %s, want no pause", until)
			case c.want != 0 && (!ok || until.Sub(now) != c.want):
				t.Errorf("paused %v (%v), want %v", until.Sub(now), ok, c.want)
			case ok && all != (c.status == http.StatusTooManyRequests):
				t.Errorf("pauses every request: %v; want that only for a 429 (a quota at 0 pauses manifest GETs)", all)
			}
		})
	}
}

// TestUnreachableUpstreamServesStaleAtOnce: an upstream that takes the
// connection and never answers costs one request its timeout; then it is
// down, and stale tags are served at once without asking it, misses get
// 503 with Retry-After at once. A closed port is down the same way.
func TestUnreachableUpstreamServesStaleAtOnce(t *testing.T) {
	for _, how := range []string{"hangs", "closed port"} {
		t.Run(how, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{})
			up.PushRandomImage(t, "team/app", "v1", 1, 1024)
			p, srv, clock := newClockedProxy(t, up)
			// As with "transport http { response_header_timeout 500ms }".
			p.Upstream.HTTP.Transport = &http.Transport{ResponseHeaderTimeout: 500 * time.Millisecond}
			if resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v1"), acceptImage); resp.StatusCode != http.StatusOK {
				t.Fatalf("first pull: %s", status(resp))
			}
			clock.advance(2 * time.Minute)
			if how == "hangs" {
				up.Faults.HangRegistry(true)
			} else if err := up.Faults.SetDown(true); err != nil {
				t.Fatal(err)
			}
			defer up.Faults.Reset()

			start := time.Now()
			resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v1"), acceptImage)
			first := time.Since(start)
			if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Cache-Status"), "stale") {
				t.Fatalf("the first stale tag: %s", status(resp))
			}
			before := up.Counters.RegistryRequests()
			var slowest time.Duration
			for i := 0; i < 20; i++ {
				start := time.Now()
				resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v1"), acceptImage)
				slowest = max(slowest, time.Since(start))
				if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Cache-Status"), "stale") {
					t.Fatalf("stale tag %d while down: %s", i, status(resp))
				}
			}
			resp, body := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v9"), acceptImage)
			if resp.StatusCode != http.StatusServiceUnavailable || registryErrorCode(t, body) != CodeUnavailable {
				t.Errorf("a miss while down: %s %s, want 503 UNAVAILABLE", status(resp), body)
			}
			wantRetryAfter(t, resp, 1)
			if n := up.Counters.RegistryRequests() - before; n != 0 {
				t.Errorf("%d upstream requests while down, want 0", n)
			}
			t.Logf("%s: first stale answer after %v (finding out), then 20 stale answers, the slowest in %v", how, first, slowest)
		})
	}
}

// TestOneProbeAtATime: once an outage's interval is over, one request goes
// upstream to find out whether it is back, however many arrive together;
// the others fail at once. A failed probe doubles the interval; an answer
// ends the outage.
func TestOneProbeAtATime(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "v1", 1, 1024)
	_, srv, clock := newClockedProxy(t, up)

	up.Faults.HangRegistry(true)
	defer up.Faults.Reset()
	// The first request finds the upstream down: its connection closes
	// without an answer.
	done := make(chan *http.Response, 1)
	go func() {
		resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "first"), acceptImage)
		done <- resp
	}()
	waitFor(t, "the first request upstream", func() bool { return up.Counters.RegistryRequests() >= 1 })
	up.Faults.HangRegistry(false)
	if resp := <-done; resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("the first request: %s, want 502", status(resp))
	}
	up.Faults.HangRegistry(true)

	concurrent := func(n int) (statuses map[int]int) {
		var mu sync.Mutex
		statuses = map[int]int{}
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "t"+strconv.Itoa(i)), acceptImage)
				mu.Lock()
				statuses[resp.StatusCode]++
				mu.Unlock()
			}(i)
		}
		wg.Wait()
		return statuses
	}

	// Within the first interval (1 s), nothing goes upstream.
	before := up.Counters.RegistryRequests()
	if got := concurrent(8); got[http.StatusServiceUnavailable] != 8 {
		t.Errorf("within the interval: %v, want 8 × 503", got)
	}
	if n := up.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("%d upstream requests within the interval, want 0", n)
	}

	// After it, one probe: it hangs while 8 others arrive.
	clock.advance(1100 * time.Millisecond)
	go func() {
		resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "probe"), acceptImage)
		done <- resp
	}()
	waitFor(t, "the probe upstream", func() bool { return up.Counters.RegistryRequests() > before })
	if got := concurrent(8); got[http.StatusServiceUnavailable] != 8 {
		t.Errorf("while the probe is out: %v, want 8 × 503", got)
	}
	if n := up.Counters.RegistryRequests() - before; n != 1 {
		t.Errorf("%d upstream requests while the probe is out, want 1 (the probe)", n)
	}
	up.Faults.HangRegistry(false) // the probe fails: no answer
	<-done

	// The interval doubled: 1.5 s later it is still down, 2 s later the
	// next probe goes.
	before = up.Counters.RegistryRequests()
	clock.advance(1500 * time.Millisecond)
	if got := concurrent(4); got[http.StatusServiceUnavailable] != 4 {
		t.Errorf("1.5 s after a failed probe: %v, want 4 × 503", got)
	}
	if n := up.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("%d upstream requests 1.5 s after a failed probe, want 0 (the interval doubled to 2 s)", n)
	}
	clock.advance(600 * time.Millisecond)
	// The upstream answers again: the probe's answer (404, an answer)
	// ends the outage, and every request goes again.
	resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v1"), acceptImage)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the probe when the upstream is back: %s, want 200", status(resp))
	}
	before = up.Counters.RegistryRequests()
	if got := concurrent(4); got[http.StatusNotFound] != 4 {
		t.Errorf("after the outage: %v, want 4 × 404 from the upstream", got)
	}
	if n := up.Counters.RegistryRequests() - before; n < 4 {
		t.Errorf("%d upstream requests after the outage, want 4", n)
	}
}

// waitFor polls cond until it holds, or fails t after a while.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: gave up", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestUpstream5xxIsNotDown: an upstream that answers 503 is there: each
// request still asks it (and a stale tag is served), nothing is marked
// down.
func TestUpstream5xxIsNotDown(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "v1", 1, 1024)
	_, srv, clock := newClockedProxy(t, up)
	if resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v1"), acceptImage); resp.StatusCode != http.StatusOK {
		t.Fatalf("first pull: %s", status(resp))
	}
	clock.advance(2 * time.Minute)
	up.Faults.SetRegistryStatus(http.StatusServiceUnavailable)
	defer up.Faults.Reset()
	before := up.Counters.RegistryRequests()
	for i := 0; i < 3; i++ {
		resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "v1"), acceptImage)
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Cache-Status"), "fwd-status=503") {
			t.Errorf("stale tag with the upstream answering 503: %s", status(resp))
		}
	}
	if n := up.Counters.RegistryRequests() - before; n != 3 {
		t.Errorf("%d upstream requests, want 3 (a 503 is an answer: each request asks)", n)
	}
}

// TestUnreachable: which failures mark an upstream down. Only the
// upstream's own host failing to answer does; a redirect target (a CDN)
// that fails, a redirect the proxy refuses, or a client that left do not.
func TestUnreachable(t *testing.T) {
	up, err := ParseUpstream("https://registry.example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	refused := &url.Error{Op: "Get", URL: "https://registry.example.com/v2/a/manifests/1", Err: errors.New("dial tcp: connection refused")}
	cdn, _ := url.Parse("https://cdn.example.net/blob?sig=1")
	live := context.Background()
	left, cancel := context.WithCancel(live)
	cancel()
	timedOut, stop := detached(live, time.Nanosecond)
	defer stop()
	<-timedOut.Done()
	for _, c := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"the upstream refuses connections", live, refused, true},
		{"the upstream's TLS handshake fails", live, &url.Error{Op: "Get", URL: "https://registry.example.com/v2/", Err: errors.New("tls: handshake failure")}, true},
		{"a redirect target fails", live, withoutQuery(cdn, &url.Error{Op: "Get", URL: cdn.String(), Err: errors.New("connection reset")}), false},
		{"another host (a token realm) fails", live, &url.Error{Op: "Get", URL: "https://auth.example.com/token", Err: errors.New("connection refused")}, false},
		{"a redirect the proxy refuses", live, &redirectError{reason: "in a loop"}, false},
		{"the client left", left, &url.Error{Op: "Get", URL: "https://registry.example.com/v2/", Err: context.Canceled}, false},
		{"no answer in time", timedOut, &url.Error{Op: "Get", URL: "https://registry.example.com/v2/", Err: context.Canceled}, true},
	} {
		if got := unreachable(c.ctx, up, c.err); got != c.want {
			t.Errorf("%s: unreachable = %v, want %v", c.name, got, c.want)
		}
	}
}
