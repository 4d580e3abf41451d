package dockerproxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"hash"
	"io"
	"net/http"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/caddy-dockerproxy/dockerproxy"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testminio"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// call sends a request to the admin endpoint and decodes its JSON answer
// into out (if not nil); it returns the response.
func (a *adminEnv) call(method, path string, header http.Header, out any) *http.Response {
	a.t.Helper()
	req, err := http.NewRequest(method, "http://"+a.admin+path, nil)
	if err != nil {
		a.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		a.t.Fatalf("%s %s: Content-Type %q, body %s", method, path, ct, body)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			a.t.Fatalf("%s %s: %v in %s", method, path, err, body)
		}
	}
	return resp
}

// settled waits until no fill is in progress: every blob a client got is
// committed.
func (a *adminEnv) settled() {
	a.t.Helper()
	waitUntil(a.t, "fills committed", func() bool {
		var c cacheAnswer
		a.call("GET", "/docker_proxy/cache", nil, &c)
		return len(c.Caches) == 1 && c.Caches[0].Fills == 0
	})
}

// The admin API's answers, as a client reads them.
type (
	cacheAnswer struct {
		Caches []struct {
			Dir          string `json:"dir"`
			Bytes        int64  `json:"bytes"`
			MaxSize      int64  `json:"max_size"`
			Entries      int    `json:"entries"`
			TagRecords   int    `json:"tag_records"`
			Fills        int    `json:"fills_in_progress"`
			IndexLoading bool   `json:"index_loading"`
			Upstreams    []struct {
				Name string `json:"name"`
				URL  string `json:"url"`
			} `json:"upstreams"`
			SharedTier struct {
				Configured bool `json:"configured"`
			} `json:"shared_tier"`
		} `json:"caches"`
	}
	imagesAnswer struct {
		Caches []struct {
			Dir          string     `json:"dir"`
			Complete     bool       `json:"complete"`
			Repositories []repoSeen `json:"repositories"`
		} `json:"caches"`
	}
	repoSeen struct {
		Upstream   string         `json:"upstream"`
		Repository string         `json:"repository"`
		Tags       []tagSeen      `json:"tags"`
		Manifests  []manifestSeen `json:"manifests"`
		LastUsed   time.Time      `json:"last_used"`
	}
	tagSeen struct {
		Tag    string `json:"tag"`
		Digest string `json:"digest"`
	}
	manifestSeen struct {
		Digest      string         `json:"digest"`
		Platform    string         `json:"platform"`
		Cached      bool           `json:"cached"`
		Size        int64          `json:"size"`
		CachedBytes int64          `json:"cached_bytes"`
		Platforms   []manifestSeen `json:"platforms"`
	}
	purgeAnswer struct {
		Image  string `json:"image"`
		Caches []struct {
			Removed struct {
				Tags       []string `json:"tags"`
				TagRecords int      `json:"tag_records"`
				Manifests  []string `json:"manifests"`
				Blobs      []string `json:"blobs"`
				Bytes      int64    `json:"bytes"`
			} `json:"removed"`
			Kept struct {
				Manifests []string `json:"manifests"`
				Blobs     []string `json:"blobs"`
				Bytes     int64    `json:"bytes"`
			} `json:"kept"`
		} `json:"caches"`
	}
	errorAnswer struct {
		Error string `json:"error"`
	}
)

// imageParts are an image's manifest digest and size, and its blobs
// (config and layers) with their sizes.
type imageParts struct {
	digest       string
	manifestSize int64
	blobs        map[string]int64
}

func partsOf(t *testing.T, img v1.Image) imageParts {
	t.Helper()
	d, _ := img.Digest()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	p := imageParts{digest: d.String(), manifestSize: int64(len(raw)), blobs: map[string]int64{m.Config.Digest.String(): m.Config.Size}}
	for _, l := range m.Layers {
		p.blobs[l.Digest.String()] = l.Size
	}
	return p
}

func (p imageParts) size() int64 {
	var n int64
	for _, s := range p.blobs {
		n += s
	}
	return n
}

func sortedBlobs(parts ...imageParts) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range parts {
		for d := range p.blobs {
			if !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	sort.Strings(out)
	return out
}

func withoutBlobs(all []string, drop []string) []string {
	out := []string{}
	for _, d := range all {
		if !contains(drop, d) {
			out = append(out, d)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// adminImages pushes library/alpine:3.20 (an index of two platforms),
// library/alpine:edge and library/busybox:1, whose two base layers the
// amd64 image of alpine:3.20 shares.
func adminImages(t *testing.T, up *testupstream.Upstream) (index v1.ImageIndex, amd64, arm64, edge, busybox v1.Image) {
	t.Helper()
	base, err := random.Image(3<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	own := func(size int64) v1.Layer {
		l, err := random.Layer(size, types.DockerLayer)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if amd64, err = mutate.AppendLayers(base, own(2<<10)); err != nil {
		t.Fatal(err)
	}
	if busybox, err = mutate.AppendLayers(base, own(1<<10)); err != nil {
		t.Fatal(err)
	}
	if arm64, err = random.Image(2<<10, 1); err != nil {
		t.Fatal(err)
	}
	if edge, err = random.Image(1<<10, 2); err != nil {
		t.Fatal(err)
	}
	index = mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.DockerManifestList),
		mutate.IndexAddendum{Add: amd64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}})
	up.PushIndex(t, "library/alpine", "3.20", index)
	up.PushImage(t, "library/alpine", "edge", edge)
	up.PushImage(t, "library/busybox", "1", busybox)
	return index, amd64, arm64, edge, busybox
}

// TestAdminListsAndPurgesImages: an image pulled through the proxy is
// listed with its tags, platforms and sizes; purging a tag and then the
// repository removes their manifests and the blobs no other image needs,
// keeps the layers busybox shares, and the next pull fetches what went
// from the upstream again.
func TestAdminListsAndPurgesImages(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	index, amd64, arm64, edge, busybox := adminImages(t, up)
	a := startAdminProxy(t, up, nil)
	pullIndex(t, a.proxyEnv, a.ref("docker.example.test", "library/alpine:3.20"), index)
	for ref, img := range map[string]v1.Image{"library/alpine:edge": edge, "library/busybox:1": busybox} {
		if err := a.pullImage(a.ref("docker.example.test", ref), nil, img); err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
	}
	pA, pC, pE, pB := partsOf(t, amd64), partsOf(t, arm64), partsOf(t, edge), partsOf(t, busybox)
	idxDigest, _ := index.Digest()
	idxRaw, _ := index.RawManifest()

	a.settled()
	var cache cacheAnswer
	a.call("GET", "/docker_proxy/cache", nil, &cache)
	if len(cache.Caches) != 1 {
		t.Fatalf("caches %+v", cache)
	}
	c := cache.Caches[0]
	wantEntries := len(sortedBlobs(pA, pC, pE, pB)) + 5 // and the manifests: index, amd64, arm64, edge, busybox
	if c.Dir != a.cacheDir || c.Entries != wantEntries || c.TagRecords != 3 || c.IndexLoading || c.SharedTier.Configured ||
		len(c.Upstreams) != 1 || c.Upstreams[0].Name != "docker.io" || c.Upstreams[0].URL != up.URL {
		t.Fatalf("cache stats %+v, want %d entries and 3 tag records in %s", c, wantEntries, a.cacheDir)
	}

	var images imagesAnswer
	a.call("GET", "/docker_proxy/images?upstream=docker.io&repository=alpine", nil, &images)
	if len(images.Caches) != 1 || !images.Caches[0].Complete || len(images.Caches[0].Repositories) != 1 {
		t.Fatalf("images %+v", images)
	}
	alpine := images.Caches[0].Repositories[0]
	wantTags := []tagSeen{{"3.20", idxDigest.String()}, {"edge", pE.digest}}
	if alpine.Upstream != "docker.io" || alpine.Repository != "library/alpine" || !reflect.DeepEqual(alpine.Tags, wantTags) || alpine.LastUsed.IsZero() {
		t.Fatalf("alpine listed as %+v, want tags %+v", alpine, wantTags)
	}
	platform := func(p imageParts, name string) manifestSeen {
		return manifestSeen{Digest: p.digest, Platform: name, Cached: true, Size: p.size(), CachedBytes: p.size()}
	}
	wantManifests := []manifestSeen{
		{Digest: idxDigest.String(), Cached: true, Size: pA.size() + pC.size(), CachedBytes: pA.size() + pC.size(),
			Platforms: []manifestSeen{platform(pA, "linux/amd64"), platform(pC, "linux/arm64/v8")}},
		{Digest: pE.digest, Cached: true, Size: pE.size(), CachedBytes: pE.size()},
	}
	sort.Slice(wantManifests, func(i, j int) bool { return wantManifests[i].Digest < wantManifests[j].Digest })
	if !reflect.DeepEqual(alpine.Manifests, wantManifests) {
		t.Fatalf("alpine's manifests\n%+v\nwant\n%+v", alpine.Manifests, wantManifests)
	}

	// A tag: its record, its manifest, the blobs only it needed.
	var purged purgeAnswer
	if resp := a.call("DELETE", "/docker_proxy/images/docker.io/library/alpine:edge", nil, &purged); resp.StatusCode != 200 {
		t.Fatalf("purge of a tag: %d %+v", resp.StatusCode, purged)
	}
	r := purged.Caches[0]
	if purged.Image != "docker.io/library/alpine:edge" || !reflect.DeepEqual(r.Removed.Tags, []string{"edge"}) || r.Removed.TagRecords != 1 ||
		!reflect.DeepEqual(r.Removed.Manifests, []string{pE.digest}) || !reflect.DeepEqual(r.Removed.Blobs, sortedBlobs(pE)) ||
		r.Removed.Bytes != pE.manifestSize+pE.size() || len(r.Kept.Manifests)+len(r.Kept.Blobs) != 0 {
		t.Fatalf("purge of alpine:edge answered %+v", purged)
	}
	a.call("GET", "/docker_proxy/images?repository=library/alpine", nil, &images)
	if got := images.Caches[0].Repositories; len(got) != 1 || !reflect.DeepEqual(got[0].Tags, wantTags[:1]) || len(got[0].Manifests) != 1 {
		t.Fatalf("after the tag's purge, alpine is listed as %+v", got)
	}

	// The repository: the base layers that busybox shares stay.
	shared := withoutBlobs(sortedBlobs(pA), withoutBlobs(sortedBlobs(pA), sortedBlobs(pB)))
	if len(shared) != 2 {
		t.Fatalf("the images share %d blobs, want the 2 base layers", len(shared))
	}
	purged = purgeAnswer{}
	if resp := a.call("DELETE", "/docker_proxy/images/docker.io/alpine", nil, &purged); resp.StatusCode != 200 {
		t.Fatalf("purge of the repository: %d %+v", resp.StatusCode, purged)
	}
	r = purged.Caches[0]
	wantRemoved := []string{idxDigest.String(), pA.digest, pC.digest}
	sort.Strings(wantRemoved)
	removedBlobs := withoutBlobs(sortedBlobs(pA, pC), shared)
	var removedBytes int64 = int64(len(idxRaw)) + pA.manifestSize + pC.manifestSize
	for _, d := range removedBlobs {
		removedBytes += pA.blobs[d] + pC.blobs[d]
	}
	if !reflect.DeepEqual(r.Removed.Tags, []string{"3.20"}) || !reflect.DeepEqual(r.Removed.Manifests, wantRemoved) ||
		!reflect.DeepEqual(r.Removed.Blobs, removedBlobs) || r.Removed.Bytes != removedBytes ||
		!reflect.DeepEqual(r.Kept.Blobs, shared) || r.Kept.Bytes != pA.blobs[shared[0]]+pA.blobs[shared[1]] {
		t.Fatalf("purge of library/alpine answered %+v\nwant removed %v and blobs %v, kept %v", purged, wantRemoved, removedBlobs, shared)
	}
	a.call("GET", "/docker_proxy/images?upstream=docker.io", nil, &images)
	if got := images.Caches[0].Repositories; len(got) != 1 || got[0].Repository != "library/busybox" ||
		len(got[0].Manifests) != 1 || got[0].Manifests[0].CachedBytes != pB.size() {
		t.Fatalf("after the purge, the cache lists %+v, want busybox whole", got)
	}

	// Busybox is whole in the cache; alpine comes from the upstream again,
	// but for the layers it shares with busybox.
	up.Counters.Reset()
	if err := a.pullImage(a.ref("docker.example.test", "library/busybox:1"), nil, busybox); err != nil {
		t.Fatal(err)
	}
	if n := up.Counters.BlobGETs() + up.Counters.ManifestGETs(); n != 0 {
		t.Fatalf("busybox after alpine's purge: %d upstream GETs, want 0", n)
	}
	pullIndex(t, a.proxyEnv, a.ref("docker.example.test", "library/alpine:3.20"), index)
	if n := up.Counters.ManifestGETsFor("library/alpine"); n != 3 {
		t.Errorf("alpine:3.20 after its purge: %d manifest GETs upstream, want 3 (the index and both platforms)", n)
	}
	for _, d := range removedBlobs {
		if n := up.Counters.BlobGETsFor(d); n != 1 {
			t.Errorf("blob %s purged: %d upstream GETs on the next pull, want 1", d, n)
		}
	}
	for _, d := range shared {
		if n := up.Counters.BlobGETsFor(d); n != 0 {
			t.Errorf("shared blob %s: %d upstream GETs, want 0 (it was kept)", d, n)
		}
	}
}

// TestAdminRefusesBadInput: malformed upstreams, names, tags and digests
// get 400, wrong methods 405, what is not served or cached 404, a foreign
// origin Caddy's own refusal; all as JSON with a message, and the cache
// stays as it was.
func TestAdminRefusesBadInput(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "library/alpine", "3.20", 2, 2<<10)
	a := startAdminProxy(t, up, nil)
	if err := a.pullImage(a.ref("docker.example.test", "library/alpine:3.20"), nil, img); err != nil {
		t.Fatal(err)
	}
	a.settled()
	filesBefore := filesUnder(t, a.cacheDir)
	var before cacheAnswer
	a.call("GET", "/docker_proxy/cache", nil, &before)

	for _, c := range []struct {
		method, path string
		header       http.Header
		status       int
	}{
		{"GET", "/docker_proxy/images?upstream=not_a_host!", nil, 400},
		{"GET", "/docker_proxy/images?upstream=docker.io&repository=Alpine", nil, 400},
		{"GET", "/docker_proxy/images?repositry=alpine", nil, 400},
		{"GET", "/docker_proxy/images?repository=a&repository=b", nil, 400},
		{"GET", "/docker_proxy/images?upstream=quay.io", nil, 404},
		{"DELETE", "/docker_proxy/images/docker.io/library/alpine:bad!tag", nil, 400},
		{"DELETE", "/docker_proxy/images/docker.io/library/alpine@sha256:1234", nil, 400},
		{"DELETE", "/docker_proxy/images/docker.io/library/alpine@md5:d41d8cd98f00b204e9800998ecf8427e", nil, 400},
		{"DELETE", "/docker_proxy/images/docker.io", nil, 400},
		{"DELETE", "/docker_proxy/images/docker.io/", nil, 400},
		{"DELETE", "/docker_proxy/images/-docker.io/library/alpine", nil, 400},
		{"DELETE", "/docker_proxy/images/docker.io/library/Alpine:3.20", nil, 400},
		{"DELETE", "/docker_proxy/images/docker.io/library/alpine:3.20?force=1", nil, 400},
		{"DELETE", "/docker_proxy/images/quay.io/library/alpine", nil, 404},
		{"DELETE", "/docker_proxy/images/docker.io/library/busybox", nil, 404},
		{"DELETE", "/docker_proxy/images/docker.io/library/alpine:3.19", nil, 404},
		{"POST", "/docker_proxy/images", nil, 405},
		{"GET", "/docker_proxy/images/docker.io/library/alpine:3.20", nil, 405},
		{"DELETE", "/docker_proxy/cache", nil, 405},
		{"DELETE", "/docker_proxy/images/docker.io/library/alpine:3.20", http.Header{"Origin": {"http://evil.example"}}, 403},
	} {
		var answer errorAnswer
		resp := a.call(c.method, c.path, c.header, &answer)
		if resp.StatusCode != c.status || answer.Error == "" {
			t.Errorf("%s %s: %d %+v, want %d with a message", c.method, c.path, resp.StatusCode, answer, c.status)
		}
		if c.status == 405 && resp.Header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", c.method, c.path)
		}
	}

	var after cacheAnswer
	a.call("GET", "/docker_proxy/cache", nil, &after)
	if !reflect.DeepEqual(before, after) || !reflect.DeepEqual(filesBefore, filesUnder(t, a.cacheDir)) {
		t.Fatalf("bad requests changed the cache: %+v -> %+v\nfiles %q\n-> %q", before, after, filesBefore, filesUnder(t, a.cacheDir))
	}
	up.Counters.Reset()
	if err := a.pullImage(a.ref("docker.example.test", "library/alpine:3.20"), nil, img); err != nil {
		t.Fatal(err)
	}
	if n := up.Counters.ManifestGETs() + up.Counters.BlobGETs(); n != 0 {
		t.Fatalf("after the bad requests, a pull made %d upstream GETs, want 0", n)
	}
}

// TestAdminWhileTheIndexLoads: while the cache's index loads, listings say
// they are not complete and a purge is refused (503, Retry-After) without
// touching the cache, since what other images need is not known yet; once
// loaded, the listing is whole and the purge goes through.
func TestAdminWhileTheIndexLoads(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "library/alpine", "3.20", 2, 2<<10)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	a := startAdminProxy(t, up, map[string]any{"dir": cacheDir})
	if err := a.pullImage(a.ref("docker.example.test", "library/alpine:3.20"), nil, img); err != nil {
		t.Fatal(err)
	}
	a.settled()
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	// The store closes once the last request of the stopped config ends.
	waitUntil(t, "the cache closed", func() bool { return !dockerproxy.CacheInUse(cacheDir) })
	filesBefore := filesUnder(t, cacheDir)

	release := dockerproxy.HoldIndexLoad()
	defer release()
	a = startAdminProxy(t, up, map[string]any{"dir": cacheDir})
	var cache cacheAnswer
	a.call("GET", "/docker_proxy/cache", nil, &cache)
	if len(cache.Caches) != 1 || !cache.Caches[0].IndexLoading {
		t.Fatalf("cache stats while loading: %+v", cache)
	}
	var images imagesAnswer
	a.call("GET", "/docker_proxy/images", nil, &images)
	if len(images.Caches) != 1 || images.Caches[0].Complete {
		t.Fatalf("images while loading: %+v", images)
	}
	var refused errorAnswer
	resp := a.call("DELETE", "/docker_proxy/images/docker.io/library/alpine", nil, &refused)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(refused.Error, "loading") {
		t.Fatalf("purge while loading: %d %+v", resp.StatusCode, refused)
	}
	if !reflect.DeepEqual(filesBefore, filesUnder(t, cacheDir)) {
		t.Fatal("a purge refused while loading changed the cache")
	}

	release()
	waitUntil(t, "the index loaded", func() bool {
		var c cacheAnswer
		a.call("GET", "/docker_proxy/cache", nil, &c)
		return !c.Caches[0].IndexLoading
	})
	a.call("GET", "/docker_proxy/images", nil, &images)
	d, _ := img.Digest()
	if got := images.Caches[0]; !got.Complete || len(got.Repositories) != 1 || got.Repositories[0].Repository != "library/alpine" ||
		len(got.Repositories[0].Manifests) != 1 || got.Repositories[0].Manifests[0].Digest != d.String() ||
		got.Repositories[0].Manifests[0].CachedBytes != partsOf(t, img).size() {
		t.Fatalf("images once loaded: %+v", got)
	}
	var purged purgeAnswer
	if resp := a.call("DELETE", "/docker_proxy/images/docker.io/library/alpine", nil, &purged); resp.StatusCode != 200 ||
		len(purged.Caches[0].Removed.Manifests) != 1 || len(purged.Caches[0].Removed.Blobs) != 3 {
		t.Fatalf("purge once loaded: %d %+v", resp.StatusCode, purged)
	}
}

// TestAdminPurgeKeepsWhatAnotherRepositoryNeeds: a manifest cached for two
// repositories survives the purge of one, said kept, with every blob; the
// purged repository no longer lists it, and the other still pulls it from
// the cache alone.
func TestAdminPurgeKeepsWhatAnotherRepositoryNeeds(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img, err := random.Image(2<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	up.PushImage(t, "library/alpine", "1", img)
	up.PushImage(t, "team/copy", "1", img)
	a := startAdminProxy(t, up, nil)
	for _, ref := range []string{"library/alpine:1", "team/copy:1"} {
		if err := a.pullImage(a.ref("docker.example.test", ref), nil, img); err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
	}
	a.settled()
	p := partsOf(t, img)
	var purged purgeAnswer
	if resp := a.call("DELETE", "/docker_proxy/images/docker.io/library/alpine", nil, &purged); resp.StatusCode != 200 {
		t.Fatalf("purge: %d %+v", resp.StatusCode, purged)
	}
	r := purged.Caches[0]
	if !reflect.DeepEqual(r.Removed.Tags, []string{"1"}) || len(r.Removed.Manifests)+len(r.Removed.Blobs) != 0 ||
		!reflect.DeepEqual(r.Kept.Manifests, []string{p.digest}) || len(r.Kept.Blobs) != 0 {
		t.Fatalf("purge of a repository whose manifest another one has: %+v", purged)
	}
	var images imagesAnswer
	a.call("GET", "/docker_proxy/images?upstream=docker.io", nil, &images)
	if got := images.Caches[0].Repositories; len(got) != 1 || got[0].Repository != "team/copy" || len(got[0].Manifests) != 1 ||
		got[0].Manifests[0].CachedBytes != p.size() {
		t.Fatalf("after the purge the cache lists %+v, want team/copy alone and whole", got)
	}
	up.Counters.Reset()
	if err := a.pullImage(a.ref("docker.example.test", "team/copy:1"), nil, img); err != nil {
		t.Fatal(err)
	}
	if n := up.Counters.ManifestGETs() + up.Counters.BlobGETs(); n != 0 {
		t.Fatalf("team/copy after the other repository's purge: %d upstream GETs, want 0", n)
	}
}

// TestAdminPurgeLeavesReadersWhole: a purge while a client reads a blob
// of the image, from the cache or from a fill in progress, does not cut
// that client: it gets every byte, right. The cached blob is gone after;
// the one being filled is committed when its fill ends.
func TestAdminPurgeLeavesReadersWhole(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	const size = 32 << 20
	_, cached := up.PushGeneratedImage(t, "library/alpine", "1", 1, size)
	_, filling := up.PushGeneratedImage(t, "library/busybox", "1", 2, size)
	a := startAdminProxy(t, up, nil)
	for _, repo := range []string{"library/alpine", "library/busybox"} {
		if _, err := remote.Get(a.ref("docker.example.test", repo+":1"), a.remoteOptions(nil)...); err != nil {
			t.Fatal(err)
		}
	}
	token := func(repo string) string { return anonymousToken(t, a.proxyEnv, "docker.example.test", repo) }
	path := func(repo string, d v1.Hash) string { return "/v2/" + repo + "/blobs/" + d.String() }
	if sum, _, _, err := a.readBlob(path("library/alpine", cached.Digest), token("library/alpine"), nil); err != nil || sum != cached.Digest.String() {
		t.Fatalf("first read: %s %v", sum, err)
	}
	a.settled()

	// open starts reading a blob and returns its body after the first MiB.
	open := func(repo string, d v1.Hash) (io.ReadCloser, hash.Hash) {
		req, _ := http.NewRequest("GET", a.url("docker.example.test", path(repo, d)), nil)
		req.Header.Set("Authorization", "Bearer "+token(repo))
		resp, err := (&http.Client{Transport: a.transport.Clone()}).Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %v %v", repo, resp, err)
		}
		h := sha256.New()
		if _, err := io.CopyN(h, resp.Body, 1<<20); err != nil {
			t.Fatal(err)
		}
		return resp.Body, h
	}
	finish := func(what string, body io.ReadCloser, h hash.Hash, want v1.Hash) {
		defer body.Close()
		n, err := io.Copy(h, body)
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); err != nil || got != want.String() {
			t.Errorf("%s: read on after the purge: %v, %d more bytes, %s", what, err, n, got)
		}
	}

	body, h := open("library/alpine", cached.Digest)
	var purged purgeAnswer
	if resp := a.call("DELETE", "/docker_proxy/images/docker.io/library/alpine", nil, &purged); resp.StatusCode != 200 ||
		!contains(purged.Caches[0].Removed.Blobs, cached.Digest.String()) {
		t.Fatalf("purge while a client reads: %d %+v", resp.StatusCode, purged)
	}
	finish("a cached blob", body, h, cached.Digest)

	hold := up.Faults.HoldBlobs(4 << 20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		body, h := open("library/busybox", filling.Digest)
		finish("a blob being filled", body, h, filling.Digest)
	}()
	<-hold.Reached()
	purged = purgeAnswer{}
	if resp := a.call("DELETE", "/docker_proxy/images/docker.io/library/busybox", nil, &purged); resp.StatusCode != 200 ||
		len(purged.Caches[0].Removed.Manifests) != 1 || contains(purged.Caches[0].Removed.Blobs, filling.Digest.String()) {
		t.Fatalf("purge while a blob fills: %d %+v", resp.StatusCode, purged)
	}
	hold.Release()
	<-done
	a.settled()
	var cache cacheAnswer
	a.call("GET", "/docker_proxy/cache", nil, &cache)
	// Left: busybox's layer, whose fill ended after the purge (neither
	// image's config was ever read).
	if cache.Caches[0].Entries != 1 || cache.Caches[0].Bytes != size {
		t.Fatalf("after both purges the cache holds %+v, want the layer whose fill ended after the purge", cache.Caches[0])
	}
}

// TestAdminPurgeSaysTheSharedTierKeepsItsCopies: with a shared tier, a
// purge empties the local cache of the image, says that the bucket keeps
// its copies, and the cache reports its shared tier; the next pull, with
// the upstream down, is served from the bucket, as the answer warned.
func TestAdminPurgeSaysTheSharedTierKeepsItsCopies(t *testing.T) {
	minio := testminio.Start(t)
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "library/app", "v1", 2, 8<<10)
	a := startAdminProxy(t, up, map[string]any{"s3": map[string]any{
		"endpoint": minio.Endpoint, "bucket": minio.Bucket, "region": "us-east-1",
		"access_key": testminio.AccessKey, "secret_key": testminio.SecretKey,
	}})
	if err := a.pullImage(a.ref("docker.example.test", "library/app:v1"), nil, img); err != nil {
		t.Fatal(err)
	}
	a.settled()
	waitUntil(t, "uploads to the shared tier", func() bool {
		var c struct {
			Caches []struct {
				SharedTier struct {
					Configured     bool `json:"configured"`
					Healthy        bool `json:"healthy"`
					PendingUploads int  `json:"pending_uploads"`
				} `json:"shared_tier"`
			} `json:"caches"`
		}
		a.call("GET", "/docker_proxy/cache", nil, &c)
		st := c.Caches[0].SharedTier
		return st.Configured && st.Healthy && st.PendingUploads == 0
	})
	var purged struct {
		Caches []struct {
			Removed struct {
				Manifests []string `json:"manifests"`
				Blobs     []string `json:"blobs"`
			} `json:"removed"`
			SharedTier string `json:"shared_tier"`
		} `json:"caches"`
	}
	if resp := a.call("DELETE", "/docker_proxy/images/docker.io/library/app", nil, &purged); resp.StatusCode != 200 ||
		len(purged.Caches[0].Removed.Manifests) != 1 || len(purged.Caches[0].Removed.Blobs) != 3 ||
		!strings.HasPrefix(purged.Caches[0].SharedTier, "not purged") {
		t.Fatalf("purge with a shared tier: %d %+v", resp.StatusCode, purged)
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer up.Faults.Reset()
	if err := a.pullImage(a.ref("docker.example.test", "library/app:v1"), nil, img); err != nil {
		t.Fatalf("after the purge, with the upstream down, the shared tier did not serve the image: %v", err)
	}
}

// TestAdminAfterAReload: the admin API answers for the config running
// now: after a reload that changes the bound and adds a second site on the
// same directory, the directory is listed once, with the new bound and
// both sites' upstreams, and its images are still there.
func TestAdminAfterAReload(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	other := testupstream.Start(t, testupstream.Options{})
	a := startAdminProxy(t, up, nil)
	img := a.pull("team/app", 4<<10)
	a.settled()
	second := a.handler(map[string]any{"max_size": 1 << 30})
	second["upstream"] = "ghcr.io"
	second["upstreams"] = map[string]string{"ghcr.io": other.URL}
	if code, body := a.load(a.config([]any{a.site(map[string]any{"max_size": 1 << 30}), a.route("ghcr.example.test", second)})); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	var cache cacheAnswer
	a.call("GET", "/docker_proxy/cache", nil, &cache)
	var names []string
	for _, c := range cache.Caches {
		for _, u := range c.Upstreams {
			names = append(names, u.Name+" "+u.URL)
		}
	}
	want := []string{"docker.io " + up.URL, "ghcr.io " + other.URL}
	if len(cache.Caches) != 1 || cache.Caches[0].MaxSize != 1<<30 || !reflect.DeepEqual(names, want) {
		t.Fatalf("after the reload: %+v, upstreams %q, want one directory bound to 1 GiB serving %q", cache, names, want)
	}
	var images imagesAnswer
	a.call("GET", "/docker_proxy/images?upstream=docker.io", nil, &images)
	d, _ := img.Digest()
	if got := images.Caches[0].Repositories; len(got) != 1 || got[0].Repository != "team/app" || got[0].Manifests[0].Digest != d.String() {
		t.Fatalf("images after the reload: %+v", got)
	}
}

// TestAdminPurgeByDigest: purging a platform manifest that an index still
// cached needs keeps it; purging the index by digest removes its tag
// record, itself, its platforms and their blobs.
func TestAdminPurgeByDigest(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	idx := up.PushRandomIndex(t, "team/app", "1")
	a := startAdminProxy(t, up, nil)
	pullIndex(t, a.proxyEnv, a.ref("docker.example.test", "team/app:1"), idx)
	a.settled()
	im, _ := idx.IndexManifest()
	idxDigest, _ := idx.Digest()
	child := im.Manifests[0].Digest.String()

	var purged purgeAnswer
	if resp := a.call("DELETE", "/docker_proxy/images/docker.io/team/app@"+child, nil, &purged); resp.StatusCode != 200 ||
		len(purged.Caches[0].Removed.Manifests)+len(purged.Caches[0].Removed.Blobs)+purged.Caches[0].Removed.TagRecords != 0 ||
		!reflect.DeepEqual(purged.Caches[0].Kept.Manifests, []string{child}) {
		t.Fatalf("purge of a platform its index needs: %d %+v", resp.StatusCode, purged)
	}
	purged = purgeAnswer{}
	if resp := a.call("DELETE", "/docker_proxy/images/docker.io/team/app@"+idxDigest.String(), nil, &purged); resp.StatusCode != 200 {
		t.Fatalf("purge of the index: %d %+v", resp.StatusCode, purged)
	}
	var want []string
	var blobs []string
	for _, m := range im.Manifests {
		want = append(want, m.Digest.String())
		img, _ := idx.Image(m.Digest)
		blobs = append(blobs, sortedBlobs(partsOf(t, img))...)
	}
	want = append(want, idxDigest.String())
	sort.Strings(want)
	sort.Strings(blobs)
	r := purged.Caches[0].Removed
	if !reflect.DeepEqual(r.Tags, []string{"1"}) || !reflect.DeepEqual(r.Manifests, want) || !reflect.DeepEqual(r.Blobs, blobs) {
		t.Fatalf("purge of the index by digest: %+v, want manifests %v and blobs %v", purged, want, blobs)
	}
	var cache cacheAnswer
	a.call("GET", "/docker_proxy/cache", nil, &cache)
	if c := cache.Caches[0]; c.Entries != 0 || c.TagRecords != 0 || c.Bytes != 0 {
		t.Fatalf("after the purge the cache holds %+v, want nothing", c)
	}
}

// TestAdminShowsASharedTierThatFails: a shared tier that cannot be reached
// shows as unhealthy, with the error.
func TestAdminShowsASharedTierThatFails(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "library/app", "v1", 1, 4<<10)
	a := startAdminProxy(t, up, map[string]any{"s3": map[string]any{
		"endpoint": "http://127.0.0.1:" + freePort(t), "bucket": "nowhere", "region": "us-east-1",
		"access_key": "id", "secret_key": "secret",
	}})
	if err := a.pullImage(a.ref("docker.example.test", "library/app:v1"), nil, img); err != nil {
		t.Fatal(err)
	}
	var c struct {
		Caches []struct {
			SharedTier struct {
				Configured bool   `json:"configured"`
				Healthy    bool   `json:"healthy"`
				Error      string `json:"error"`
			} `json:"shared_tier"`
		} `json:"caches"`
	}
	a.call("GET", "/docker_proxy/cache", nil, &c)
	st := c.Caches[0].SharedTier
	if !st.Configured || st.Healthy || !strings.Contains(st.Error, "connection refused") {
		t.Fatalf("shared tier that cannot be reached shown as %+v", st)
	}
}
