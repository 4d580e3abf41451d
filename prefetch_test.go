package dockerproxy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-dockerproxy/dockerproxy"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// prefetchAnswer is what POST /docker_proxy/prefetch streamed back.
type prefetchAnswer struct {
	status   int
	body     string
	progress []map[string]any
	images   []map[string]any
	done     map[string]any
}

// postPrefetch posts body to the admin endpoint's prefetch route and
// reads the whole answer.
func postPrefetch(t *testing.T, admin, body string) prefetchAnswer {
	t.Helper()
	resp, err := http.Post(admin+"/docker_proxy/prefetch", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	a := prefetchAnswer{status: resp.StatusCode}
	var all strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		all.WriteString(sc.Text() + "\n")
		if resp.StatusCode != http.StatusOK {
			continue
		}
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		switch line["event"] {
		case "progress":
			a.progress = append(a.progress, line)
		case "image":
			a.images = append(a.images, line)
		case "done":
			a.done = line
		default:
			t.Fatalf("line %q: unknown event", sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	a.body = all.String()
	return a
}

func (a prefetchAnswer) image(t *testing.T, i int) map[string]any {
	t.Helper()
	if a.status != http.StatusOK || len(a.images) <= i {
		t.Fatalf("prefetch answered %d with %d image results:\n%s", a.status, len(a.images), a.body)
	}
	return a.images[i]
}

func num(v any) int64 { f, _ := v.(float64); return int64(f) }

// imageBlobCount is the number of distinct blobs (config and layers) of
// the index's images for the platforms (all when none).
func indexBlobs(t *testing.T, idx v1.ImageIndex, platforms ...string) (blobs []v1.Hash, manifests []v1.Hash) {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[v1.Hash]bool{}
	for _, desc := range im.Manifests {
		if len(platforms) > 0 && !containsString(platforms, desc.Platform.OS+"/"+desc.Platform.Architecture) {
			continue
		}
		manifests = append(manifests, desc.Digest)
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ := img.ConfigName()
		for _, d := range append([]v1.Hash{cfg}, layerDigests(t, img)...) {
			if !seen[d] {
				seen[d] = true
				blobs = append(blobs, d)
			}
		}
	}
	return blobs, manifests
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestPrefetchThenOfflinePull: an image prefetched through the admin API
// is then pulled, with the upstream down, by a real registry client, every
// byte from the cache; a second prefetch finds it all cached and asks the
// upstream for nothing.
func TestPrefetchThenOfflinePull(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	idx := up.PushRandomIndex(t, "team/app", "1")
	wantBlobs, wantManifests := indexBlobs(t, idx)
	e, admin := startProxyAdmin(t, up, cachedBlock("tag_ttl 1h"))

	a := postPrefetch(t, admin, `{"images": ["docker.io/team/app:1"]}`)
	res := a.image(t, 0)
	idxDigest, _ := idx.Digest()
	if res["status"] != "fetched" || res["digest"] != idxDigest.String() || res["error"] != nil {
		t.Fatalf("first prefetch: %v, want fetched %s", res, idxDigest)
	}
	if num(res["blobs"]) != int64(len(wantBlobs)) || num(res["blobs_fetched"]) != int64(len(wantBlobs)) ||
		num(res["manifests"]) != int64(1+len(wantManifests)) || num(res["manifests_fetched"]) != int64(1+len(wantManifests)) {
		t.Errorf("first prefetch: %v, want %d blobs and %d manifests, all fetched", res, len(wantBlobs), 1+len(wantManifests))
	}
	// Progress, blob by blob, up to every blob and byte.
	if len(a.progress) != len(wantBlobs)+1 {
		t.Fatalf("%d progress lines, want one at the start and one per blob (%d):\n%s", len(a.progress), len(wantBlobs), a.body)
	}
	for i, p := range a.progress {
		if num(p["blobs_done"]) != int64(i) || num(p["blobs_total"]) != int64(len(wantBlobs)) {
			t.Errorf("progress line %d: %v", i, p)
		}
	}
	if last := a.progress[len(a.progress)-1]; num(last["bytes_done"]) != num(last["bytes_total"]) || num(last["bytes_total"]) != num(res["bytes"]) {
		t.Errorf("last progress %v, result %v: every byte should be done", last, res)
	}
	if a.done == nil || num(a.done["counts"].(map[string]any)["fetched"]) != 1 {
		t.Errorf("done line %v, want one image fetched", a.done)
	}
	if got := up.Counters.ManifestGETs(); got != int64(1+len(wantManifests)) {
		t.Errorf("the upstream served %d manifest GETs, want %d (the index and each platform's)", got, 1+len(wantManifests))
	}
	for _, d := range wantBlobs {
		if up.Counters.ObjectStoreGETsFor(d.String()) != 1 {
			t.Errorf("blob %s: fetched %d times from the upstream, want once", d, up.Counters.ObjectStoreGETsFor(d.String()))
		}
	}

	// Again: everything cached, nothing asked upstream.
	up.Counters.Reset()
	a = postPrefetch(t, admin, `{"images": ["docker.io/team/app:1"]}`)
	res = a.image(t, 0)
	if res["status"] != "cached" || num(res["blobs_fetched"]) != 0 || num(res["manifests_fetched"]) != 0 || num(res["blobs"]) != int64(len(wantBlobs)) {
		t.Errorf("second prefetch: %v, want everything cached", res)
	}
	if n := up.Counters.RegistryRequests() + up.Counters.ObjectStoreRequests(); n != 0 {
		t.Errorf("second prefetch made %d upstream requests, want 0", n)
	}

	// Offline: every byte from the cache, to a client that never pulled.
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	up.Counters.Reset()
	pullIndex(t, e, e.ref("docker.example.test", "team/app:1"), idx)
	if n := up.Counters.ObjectStoreRequests(); n != 0 {
		t.Errorf("the offline pull made %d object store requests, want 0", n)
	}
}

// TestPrefetchPlatformSubset: with platforms, an index's other manifests
// and their blobs are not fetched; what was is pulled offline, and the
// rest is not there.
func TestPrefetchPlatformSubset(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	idx := up.PushRandomIndex(t, "team/app", "1")
	armBlobs, armManifests := indexBlobs(t, idx, "linux/arm64")
	_, amdManifests := indexBlobs(t, idx, "linux/amd64")
	e, admin := startProxyAdmin(t, up, cachedBlock("tag_ttl 1h"))

	res := postPrefetch(t, admin, `{"images": ["docker.io/team/app:1"], "platforms": ["linux/arm64/v8"]}`).image(t, 0)
	if res["status"] != "fetched" || num(res["blobs"]) != int64(len(armBlobs)) || num(res["manifests"]) != 2 {
		t.Fatalf("prefetch of linux/arm64: %v, want %d blobs, 2 manifests", res, len(armBlobs))
	}
	if got := fmt.Sprint(res["platforms"]); got != "[linux/arm64]" {
		t.Errorf("platforms %s, want [linux/arm64]", got)
	}
	if up.Counters.ManifestGETs() != 2 || up.Counters.ObjectStoreGETs() != int64(len(armBlobs)) {
		t.Errorf("upstream served %d manifest GETs and %d blobs, want 2 and %d", up.Counters.ManifestGETs(), up.Counters.ObjectStoreGETs(), len(armBlobs))
	}
	for _, d := range armBlobs {
		if up.Counters.ObjectStoreGETsFor(d.String()) != 1 {
			t.Errorf("arm64 blob %s not fetched", d)
		}
	}

	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	ref := e.ref("docker.example.test", "team/app@"+armManifests[0].String())
	arm, err := remote.Image(ref, e.remoteOptions(nil)...)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Image(armManifests[0])
	if err := testupstream.SameImage(arm, want); err != nil {
		t.Errorf("arm64 image offline: %v", err)
	}
	if _, err := remote.Image(e.ref("docker.example.test", "team/app@"+amdManifests[0].String()), e.remoteOptions(nil)...); err == nil {
		t.Error("the amd64 image, not prefetched, pulled with the upstream down")
	}
}

// TestPrefetchBadRequests: malformed input is a 400 with a message, and
// nothing goes upstream.
func TestPrefetchBadRequests(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "1", 1, 1024)
	_, admin := startProxyAdmin(t, up, cachedBlock(""))
	for _, tc := range []struct{ name, body, want string }{
		{"not JSON", `images: [alpine]`, "must be JSON"},
		{"unknown field", `{"images": ["docker.io/team/app:1"], "platform": "linux/amd64"}`, "unknown field"},
		{"no images", `{"images": []}`, "no images"},
		{"malformed reference", `{"images": ["docker.io/team/app:1", "docker.io/Team/App:1"]}`, "must be lowercase"},
		{"bad tag", `{"images": ["docker.io/team/app:-x"]}`, "invalid reference format"},
		{"bad digest", `{"images": ["docker.io/team/app@sha256:abc"]}`, "invalid"},
		{"registry not served", `{"images": ["docker.io/team/app:1", "quay.io/team/app:1"]}`, "no docker_proxy handler with a cache serves registry quay.io"},
		{"bad platform", `{"images": ["docker.io/team/app:1"], "platforms": ["linux"]}`, "os/architecture"},
		{"platform in upper case", `{"images": ["docker.io/team/app:1"], "platforms": ["Linux/AMD64"]}`, "lower-case"},
		{"two objects", `{"images": ["docker.io/team/app:1"]} {}`, "one JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := postPrefetch(t, admin, tc.body)
			var e struct{ Error string }
			if a.status != http.StatusBadRequest || json.Unmarshal([]byte(a.body), &e) != nil || !strings.Contains(e.Error, tc.want) {
				t.Errorf("%s: %d %s, want 400 with a JSON error containing %q", tc.body, a.status, a.body, tc.want)
			}
		})
	}
	resp, err := http.Get(admin + "/docker_proxy/prefetch")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", resp.StatusCode)
	}
	if n := up.Counters.RegistryRequests(); n != 0 {
		t.Errorf("bad requests made %d upstream requests, want 0", n)
	}
}

// prefetchBaseline holds the counts of prefetched images before the test's
// proxy started (the counts live as long as the process, across tests):
// prefetchCount reports what the test added.
var prefetchBaseline = map[string]float64{}

// countPrefetchesFromHere records the counts so far as the baseline; a test
// that reads prefetchCount calls it before its proxy starts (a schedule
// runs as soon as it has).
func countPrefetchesFromHere() {
	for _, r := range []string{"fetched", "cached", "failed", "rate_limited"} {
		prefetchBaseline[r] = dockerproxy.PrefetchImagesCount("docker.io", r)
	}
}

// prefetchCount reads caddy_docker_proxy_prefetch_images_total of
// docker.io for a result from Caddy's /metrics, less the baseline.
func (e *proxyEnv) prefetchCount(result string) string {
	e.t.Helper()
	_, body := e.do("GET", "docker.example.test", "/metrics", nil)
	prefix := `caddy_docker_proxy_prefetch_images_total{result="` + result + `",upstream="docker.io"} `
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				e.t.Fatalf("%s%s: %v", prefix, v, err)
			}
			return strconv.FormatFloat(n-prefetchBaseline[result], 'f', -1, 64)
		}
	}
	return "0"
}

// scheduledBlock is cachedBlock with a prefetch block and /metrics.
func scheduledBlock(prefetch string) string {
	return `http://:{PORT} {
	handle /metrics {
		metrics
	}
	handle {
		docker_proxy docker.io {
			upstream docker.io {UPSTREAM}
			cache {DIR}/cache {
				tag_ttl 1h
			}
			prefetch {
				` + prefetch + `
			}
		}
	}
}`
}

// runsFinished counts the scheduled runs the log reports finished.
func (e *proxyEnv) runsFinished() int {
	b, err := os.ReadFile(e.logPath)
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.Count(string(b), "prefetch run finished")
}

// TestScheduledPrefetch: the prefetch block runs once the config has
// started; its image then pulls with the upstream down.
func TestScheduledPrefetch(t *testing.T) {
	countPrefetchesFromHere()
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 2, 8<<10)
	e := startProxy(t, up, scheduledBlock("interval 1h\n\t\t\t\timages docker.io/team/app:1"))
	waitUntil(t, "the first scheduled run", func() bool { return e.runsFinished() == 1 })
	if got := e.prefetchCount("fetched"); got != "1" {
		t.Errorf("prefetch_images_total{fetched} = %s, want 1", got)
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	up.Counters.Reset()
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatalf("offline pull of the prefetched image: %v", err)
	}
	if n := up.Counters.ObjectStoreRequests(); n != 0 {
		t.Errorf("the offline pull made %d object store requests, want 0", n)
	}
}

// TestScheduledPrefetchStopsAt429: a 429 stops the run (the upstream's
// other images are not asked), says so in the log and the metric, and the
// next run tries again.
func TestScheduledPrefetchStopsAt429(t *testing.T) {
	countPrefetchesFromHere()
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/a", "1", 1, 1024)
	b := up.PushRandomImage(t, "team/b", "1", 1, 1024)
	up.Faults.RateLimit(true, time.Minute)
	e := startProxy(t, up, scheduledBlock("interval 1h\n\t\t\t\timages docker.io/team/a:1 docker.io/team/b:1"))
	waitUntil(t, "the first scheduled run", func() bool { return e.runsFinished() == 1 })
	if n := up.Counters.ManifestGETsFor("team/a"); n != 1 {
		t.Errorf("team/a: %d manifest GETs, want 1 (answered 429)", n)
	}
	if n := up.Counters.ManifestGETsFor("team/b") + up.Counters.ManifestHEADsFor("team/b"); n != 0 {
		t.Errorf("team/b: %d manifest requests after the 429, want 0", n)
	}
	if got := e.prefetchCount("rate_limited"); got != "2" {
		t.Errorf("prefetch_images_total{rate_limited} = %s, want 2", got)
	}
	if !e.logContains("answered 429 Too Many Requests; its images wait for the next run") {
		t.Error("the log does not say that the run stopped at a 429")
	}

	// A run while the 429's Retry-After (a minute) lasts asks nothing.
	up.Faults.RateLimit(false, 0)
	up.Counters.Reset()
	dockerproxy.PrefetchNow()
	waitUntil(t, "the second scheduled run", func() bool { return e.runsFinished() == 2 })
	if n := up.Counters.RegistryRequests(); n != 0 {
		t.Errorf("a run during the upstream's Retry-After made %d upstream requests, want 0", n)
	}
	if got := e.prefetchCount("rate_limited"); got != "4" {
		t.Errorf("during the pause: prefetch_images_total{rate_limited} = %s, want 4", got)
	}

	// The next run after it fetches both.
	dockerproxy.AdvanceClock(time.Minute)
	dockerproxy.PrefetchNow()
	waitUntil(t, "the third scheduled run", func() bool { return e.runsFinished() == 3 })
	if got := e.prefetchCount("fetched"); got != "2" {
		t.Errorf("after the limit: prefetch_images_total{fetched} = %s, want 2", got)
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	if err := e.pullImage(e.ref("docker.example.test", "team/b:1"), nil, b); err != nil {
		t.Fatalf("offline pull of team/b: %v", err)
	}
}

// TestPrefetchStopsAtQuotaZero: once the upstream reports its quota at 0,
// no further manifest GET is made (Docker Hub would refuse it and count it).
func TestPrefetchStopsAtQuotaZero(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{RateLimit: 1})
	up.PushRandomIndex(t, "team/app", "1")
	up.PushRandomImage(t, "team/other", "1", 1, 1024)
	_, admin := startProxyAdmin(t, up, cachedBlock(""))
	a := postPrefetch(t, admin, `{"images": ["docker.io/team/app:1", "docker.io/team/other:1"]}`)
	for i := range 2 {
		res := a.image(t, i)
		if res["status"] != "rate_limited" || res["rate_limited"] != "quota" {
			t.Errorf("image %d: %v, want rate_limited by the quota", i, res)
		}
	}
	if n := up.Counters.ManifestGETs(); n != 1 {
		t.Errorf("%d manifest GETs, want 1: none once the quota is reported at 0", n)
	}
}

// TestPrefetchStopsAtAQuotaAClientSaw: the quota is the identity's, not the
// prefetch's: an anonymous client's pull that left it at 0 stops a
// prefetch before its first manifest GET.
func TestPrefetchStopsAtAQuotaAClientSaw(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{RateLimit: 1})
	img := up.PushRandomImage(t, "team/app", "1", 1, 1024)
	up.PushRandomImage(t, "team/other", "1", 1, 1024)
	e, admin := startProxyAdmin(t, up, cachedBlock(""))
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatal(err)
	}
	res := postPrefetch(t, admin, `{"images": ["docker.io/team/other:1"]}`).image(t, 0)
	if res["status"] != "rate_limited" || res["rate_limited"] != "quota" {
		t.Errorf("prefetch after a client used the quota up: %v, want rate_limited by the quota", res)
	}
	if n := up.Counters.ManifestGETsFor("team/other"); n != 0 {
		t.Errorf("team/other: %d manifest GETs, want 0", n)
	}
}

// TestPrefetchedTagOfflinePastTagTTL: a tag prefetched long before (past
// tag_ttl) is served, stale, to a client whose Accept differs from the
// prefetch's, while the upstream is down.
func TestPrefetchedTagOfflinePastTagTTL(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 2, 8<<10)
	e, admin := startProxyAdmin(t, up, cachedBlock("tag_ttl 1h"))
	if res := postPrefetch(t, admin, `{"images": ["docker.io/team/app:1"]}`).image(t, 0); res["status"] != "fetched" {
		t.Fatalf("prefetch: %v", res)
	}
	dockerproxy.AdvanceClock(2 * time.Hour)
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatalf("offline pull, past tag_ttl, of the prefetched tag: %v", err)
	}
}

// TestPrefetchDoesNotWidenAccess: a private image prefetched with one
// site's credentials is served to that site's clients, never through
// another site (same cache, no credentials), online or offline; and that
// other site's own prefetch of it fails, cached or not.
func TestPrefetchDoesNotWidenAccess(t *testing.T) {
	countPrefetchesFromHere()
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "alice-pw")
	img := up.PushRandomImage(t, "team/secret", "1", 2, 8<<10)
	site := func(host, credentials string) string {
		return `http://` + host + `:{PORT} {
	handle /metrics {
		metrics
	}
	handle {
		docker_proxy docker.io {
			upstream docker.io {UPSTREAM}
			` + credentials + `
			cache {DIR}/cache
			prefetch {
				interval 1h
				images docker.io/team/secret:1
			}
		}
	}
}
`
	}
	e := startProxy(t, up, site("docker.example.test", "credentials alice alice-pw")+site("ghcr.example.test", ""))
	waitUntil(t, "both sites' first runs", func() bool { return e.runsFinished() == 2 })
	if f, failed := e.prefetchCount("fetched"), e.prefetchCount("failed"); f != "1" || failed != "1" {
		t.Fatalf("first runs: %s fetched, %s failed; want 1 and 1 (the site without credentials)", f, failed)
	}
	// Cached now: the site without credentials still may not read it.
	dockerproxy.PrefetchNow()
	waitUntil(t, "both sites' second runs", func() bool { return e.runsFinished() == 4 })
	if c, failed := e.prefetchCount("cached"), e.prefetchCount("failed"); c != "1" || failed != "2" {
		t.Errorf("second runs: %s cached, %s failed; want 1 and 2", c, failed)
	}
	if !e.logContains(`401 UNAUTHORIZED`) {
		t.Error("the log does not say why the site without credentials failed")
	}

	if err := e.pullImage(e.ref("docker.example.test", "team/secret:1"), nil, img); err != nil {
		t.Errorf("the site with the credentials: %v", err)
	}
	if err := e.pullImage(e.ref("ghcr.example.test", "team/secret:1"), nil, img); err == nil {
		t.Error("the site without credentials served the prefetched private image")
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	if err := e.pullImage(e.ref("ghcr.example.test", "team/secret:1"), nil, img); err == nil {
		t.Error("the site without credentials served the prefetched private image offline")
	}
}

// TestPrefetchRefetchesWhatTheDiskLost: a blob the store lists but whose
// file is gone is fetched again, not reported cached.
func TestPrefetchRefetchesWhatTheDiskLost(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 64<<10)
	e, admin := startProxyAdmin(t, up, cachedBlock("tag_ttl 1h"))
	if res := postPrefetch(t, admin, `{"images": ["docker.io/team/app:1"]}`).image(t, 0); res["status"] != "fetched" {
		t.Fatalf("prefetch: %v", res)
	}
	layer := layerDigests(t, img)[0]
	var file string
	waitUntil(t, "the layer's fill to commit", func() bool {
		for _, f := range filesUnder(t, e.dataDirParent()) {
			if strings.HasSuffix(f, layer.Hex) {
				file = filepath.Join(e.dataDirParent(), f)
				return true
			}
		}
		return false
	})
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	res := postPrefetch(t, admin, `{"images": ["docker.io/team/app:1"]}`).image(t, 0)
	if res["status"] != "fetched" || num(res["blobs_fetched"]) != 1 {
		t.Errorf("prefetch after the layer's file went: %v, want it fetched again", res)
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Errorf("offline pull: %v", err)
	}
}

// TestPrefetchQuotaZeroAfterTheLastManifest: an image whose last manifest
// GET reports the quota at 0 still gets its blobs (Docker Hub does not
// count them); the next image is not asked.
func TestPrefetchQuotaZeroAfterTheLastManifest(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{RateLimit: 1})
	img := up.PushRandomImage(t, "team/app", "1", 2, 4<<10)
	up.PushRandomImage(t, "team/other", "1", 1, 1024)
	e, admin := startProxyAdmin(t, up, cachedBlock(""))
	a := postPrefetch(t, admin, `{"images": ["docker.io/team/app:1", "docker.io/team/other:1"]}`)
	if res := a.image(t, 0); res["status"] != "fetched" || res["rate_limited"] != "quota" || num(res["blobs_fetched"]) != 3 {
		t.Errorf("first image: %v, want fetched (3 blobs) with the quota reported at 0", res)
	}
	if res := a.image(t, 1); res["status"] != "rate_limited" {
		t.Errorf("second image: %v, want rate_limited", res)
	}
	if n := up.Counters.ManifestGETsFor("team/other"); n != 0 {
		t.Errorf("team/other: %d manifest GETs, want 0", n)
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Errorf("offline pull of the first image: %v", err)
	}
}
