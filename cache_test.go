package dockerproxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-dockerproxy/dockerproxy"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// cachedBlock proxies the test upstream as Docker Hub with the cache on.
func cachedBlock(options string) string {
	return `http://:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		cache {DIR}/cache {
			` + options + `
		}
	}
}`
}

// get does an authenticated request with a token from the proxy.
func (e *proxyEnv) get(method, path, token string, header http.Header) (*http.Response, string) {
	e.t.Helper()
	h := http.Header{}
	for k, v := range header {
		h[k] = v
	}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	return e.do(method, "docker.example.test", path, h)
}

func layerDigests(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var ds []v1.Hash
	for _, l := range layers {
		d, _ := l.Digest()
		ds = append(ds, d)
	}
	return ds
}

func TestThousandPullsOfOneTagCostOneManifestGET(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 2, 8<<10)
	// tag_ttl passes when the test moves the caches' clock past it, not
	// with the time this machine takes.
	e := startProxy(t, up, cachedBlock("tag_ttl 1h"))
	ref := e.ref("docker.example.test", "team/app:1")

	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for c := 0; c < 20; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				desc, err := remote.Get(ref, e.remoteOptions(nil)...)
				if err != nil {
					errs <- err
					return
				}
				if want, _ := img.Digest(); desc.Digest != want {
					errs <- fmt.Errorf("digest %s, want %s", desc.Digest, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := up.Counters.ManifestGETs(); n != 1 {
		t.Errorf("1000 pulls within tag_ttl: %d manifest GETs upstream, want 1", n)
	}
	if n := up.Counters.ManifestHEADs(); n != 0 {
		t.Errorf("1000 pulls within tag_ttl: %d manifest HEADs upstream, want 0", n)
	}

	// Once stale, the tag is revalidated with one HEAD while unchanged,
	// and fresh again for tag_ttl after it.
	dockerproxy.AdvanceClock(time.Hour + time.Second)
	for i := 0; i < 5; i++ {
		if err := e.pullImage(ref, nil, img); err != nil {
			t.Fatal(err)
		}
	}
	if g, h := up.Counters.ManifestGETs(), up.Counters.ManifestHEADs(); g != 1 || h != 1 {
		t.Errorf("after tag_ttl: %d GETs, %d HEADs upstream; want 1 GET and 1 HEAD", g, h)
	}

	// A changed tag is seen after tag_ttl, not before.
	img2 := up.PushRandomImage(t, "team/app", "1", 2, 8<<10)
	if err := e.pullImage(ref, nil, img); err != nil {
		t.Fatalf("within tag_ttl the cached digest is served: %v", err)
	}
	dockerproxy.AdvanceClock(time.Hour + time.Second)
	if err := e.pullImage(ref, nil, img2); err != nil {
		t.Fatalf("after tag_ttl the new digest is served: %v", err)
	}
	if g := up.Counters.ManifestGETs(); g != 2 {
		t.Errorf("%d manifest GETs after the tag changed, want 2", g)
	}
}

func TestManifestAcceptIsHonoured(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	idx := up.PushRandomIndex(t, "team/multi", "v1",
		v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"})
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	tok := anonymousToken(t, e, "docker.example.test", "team/multi")
	idxDigest, _ := idx.Digest()
	im, _ := idx.IndexManifest()
	var amd64 v1.Hash
	for _, m := range im.Manifests {
		if m.Platform.Architecture == "amd64" {
			amd64 = m.Digest
		}
	}
	single := http.Header{"Accept": {"application/vnd.docker.distribution.manifest.v2+json"}}
	both := http.Header{"Accept": {"application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"}}
	for round := 0; round < 2; round++ {
		for _, c := range []struct {
			h    http.Header
			want v1.Hash
		}{{single, amd64}, {both, idxDigest}} {
			for _, method := range []string{"GET", "HEAD"} {
				resp, _ := e.get(method, "/v2/team/multi/manifests/v1", tok, c.h)
				if got := resp.Header.Get("Docker-Content-Digest"); got != c.want.String() {
					t.Errorf("round %d %s Accept %q: digest %s, want %s", round, method, c.h.Get("Accept"), got, c.want)
				}
			}
		}
	}
	if n := up.Counters.ManifestGETs(); n != 2 {
		t.Errorf("%d manifest GETs upstream, want 2 (one per Accept)", n)
	}
}

func TestHitsNeverGoUpstreamAndSayHit(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 2, 100<<10)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatal(err)
	}
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	// Tag records are per Accept (the upstream's answer depends on it):
	// warm the one these requests use.
	if resp, _ := e.get("GET", "/v2/team/app/manifests/1", tok, nil); resp.StatusCode != 200 {
		t.Fatalf("warming the tag: %d", resp.StatusCode)
	}
	before := up.Counters.RegistryRequests() + up.Counters.ObjectStoreRequests()
	md, _ := img.Digest()
	paths := []string{"/v2/team/app/manifests/1", "/v2/team/app/manifests/" + md.String()}
	for _, d := range layerDigests(t, img) {
		paths = append(paths, "/v2/team/app/blobs/"+d.String())
	}
	for _, p := range paths {
		for _, method := range []string{"GET", "HEAD"} {
			resp, _ := e.get(method, p, tok, nil)
			if resp.StatusCode != 200 || resp.Header.Get("Cache-Status") != "docker_proxy; hit" {
				t.Errorf("%s %s = %d Cache-Status %q", method, p, resp.StatusCode, resp.Header.Get("Cache-Status"))
			}
		}
	}
	// Conditional and Range requests on hits.
	etag := `"` + layerDigests(t, img)[0].String() + `"`
	resp, _ := e.get("GET", "/v2/team/app/blobs/"+layerDigests(t, img)[0].String(), tok, http.Header{"If-None-Match": {etag}})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match on a hit = %d, want 304", resp.StatusCode)
	}
	resp, body := e.get("GET", "/v2/team/app/blobs/"+layerDigests(t, img)[0].String(), tok, http.Header{"Range": {"bytes=0-9"}})
	if resp.StatusCode != http.StatusPartialContent || len(body) != 10 {
		t.Errorf("Range on a hit = %d, %d bytes", resp.StatusCode, len(body))
	}
	if n := up.Counters.RegistryRequests() + up.Counters.ObjectStoreRequests() - before; n != 0 {
		t.Errorf("hits made %d upstream requests", n)
	}
}

// readBlob GETs a blob and returns its sha256 and length, or the error
// that ended the transfer.
func (e *proxyEnv) readBlob(path, token string, header http.Header) (sum string, n int64, status string, err error) {
	return e.readBlobCounting(path, token, header, nil)
}

// readBlobCounting is readBlob that adds one to responded, if not nil, as
// soon as the response's headers have arrived: the proxy sends them once
// the request has found its place (a hit, the fill it leads or joins).
func (e *proxyEnv) readBlobCounting(path, token string, header http.Header, responded *atomic.Int64) (sum string, n int64, status string, err error) {
	req, _ := http.NewRequest("GET", e.url("docker.example.test", path), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range header {
		req.Header[k] = v
	}
	tr := e.transport.Clone()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", 0, "", err
	}
	defer resp.Body.Close()
	if responded != nil {
		responded.Add(1)
	}
	h := sha256.New()
	n, err = io.Copy(h, resp.Body)
	if err == nil && resp.StatusCode/100 != 2 {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, resp.Header.Get("Cache-Status"), err
}

func TestFiftyConcurrentColdPullsFetchOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB x 50")
	}
	up := testupstream.Start(t, testupstream.Options{})
	const size = 256 << 20
	_, blob := up.PushGeneratedImage(t, "team/big", "1", 7, size)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	tok := anonymousToken(t, e, "docker.example.test", "team/big")
	path := "/v2/team/big/blobs/" + blob.Digest.String()

	// Hold the upstream body after 64 MiB so that every client, including
	// a late one and a Range request, joins a fill in progress.
	hold := up.Faults.HoldBlobs(64 << 20)
	type result struct {
		sum    string
		n      int64
		status string
		err    error
	}
	results := make(chan result, 52)
	var responded atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sum, n, st, err := e.readBlobCounting(path, tok, nil, &responded)
			results <- result{sum, n, st, err}
		}()
	}
	<-hold.Reached()
	// A client that joins halfway, and a Range request on the fill.
	wg.Add(2)
	go func() {
		defer wg.Done()
		sum, n, st, err := e.readBlobCounting(path, tok, nil, &responded)
		results <- result{sum, n, st, err}
	}()
	var rangeBody []byte
	var rangeStatus string
	var rangeResponded atomic.Bool
	go func() {
		defer wg.Done()
		req, _ := http.NewRequest("GET", e.url("docker.example.test", path), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		// To the end: a range that ends before it holds its last byte
		// back until the fill is verified, so its response could not
		// be seen while the fill is in progress.
		req.Header.Set("Range", "bytes=100000000-")
		resp, err := (&http.Client{Transport: e.transport.Clone()}).Do(req)
		if err == nil {
			rangeResponded.Store(true)
			rangeStatus = resp.Header.Get("Cache-Status")
			rangeBody = make([]byte, 100)
			var rest int64
			if _, err = io.ReadFull(resp.Body, rangeBody); err == nil {
				rest, err = io.Copy(io.Discard, resp.Body)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusPartialContent {
				err = fmt.Errorf("range status %d", resp.StatusCode)
			} else if err == nil && 100+rest != size-100000000 {
				err = fmt.Errorf("range of %d bytes, want %d", 100+rest, size-100000000)
			}
		}
		results <- result{status: "range", err: err}
	}()
	// Every client has its response, so each one has joined the held fill
	// (or leads it). The Range request waits for bytes past the hold
	// point: the upstream goes on to a second hold point past the range's
	// start, where the Range request has its response, from the fill in
	// progress.
	waitUntil(t, "every client's response", func() bool { return responded.Load() == 51 })
	hold = up.Faults.HoldBlobs(128 << 20) // releases the first hold
	waitUntil(t, "the Range request's response", rangeResponded.Load)
	hold.Release()
	wg.Wait()
	close(results)
	joined := 0
	for r := range results {
		if r.err != nil {
			t.Errorf("client failed: %v", r.err)
			continue
		}
		if r.status == "range" {
			continue
		}
		if r.sum != blob.Digest.String() || r.n != size {
			t.Errorf("client got %d bytes hashing to %s", r.n, r.sum)
		}
		if strings.Contains(r.status, "collapsed") {
			joined++
		}
	}
	want := make([]byte, 100)
	if _, err := blob.Open().ReadAt(want, 100000000); err != nil {
		t.Fatal(err)
	}
	if string(rangeBody) != string(want) {
		t.Error("Range on a fill in progress returned the wrong bytes")
	}
	if !strings.Contains(rangeStatus, "collapsed") {
		t.Errorf("Range request's Cache-Status %q, want it joined the fill (collapsed)", rangeStatus)
	}
	if joined != 50 {
		t.Errorf("%d clients joined the fill, want 50: all but the one that started it", joined)
	}
	if got := up.Counters.BlobBytes(); got != size {
		t.Errorf("upstream sent %d blob bytes for a %d-byte blob (%.2fx)", got, size, float64(got)/size)
	}
	if n := up.Counters.ObjectStoreGETsFor(blob.Digest.String()); n != 1 {
		t.Errorf("%d upstream fetches of the blob, want 1", n)
	}
}

func TestBrokenUpstreamBlobsFailVisiblyAndAreNotKept(t *testing.T) {
	for _, fault := range []string{"cut", "corrupt"} {
		t.Run(fault, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{})
			const size = 4 << 20
			_, blob := up.PushGeneratedImage(t, "team/big", "1", 3, size)
			e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
			tok := anonymousToken(t, e, "docker.example.test", "team/big")
			path := "/v2/team/big/blobs/" + blob.Digest.String()
			switch fault {
			case "cut":
				up.Faults.CutBlobsAfter(size / 2)
			case "corrupt":
				up.Faults.CorruptBlobs(true)
			}
			hold := up.Faults.HoldBlobs(1 << 20)
			var wg sync.WaitGroup
			var responded atomic.Int64
			errs := make(chan error, 5)
			for i := 0; i < 5; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sum, n, _, err := e.readBlobCounting(path, tok, nil, &responded)
					if err == nil {
						err = fmt.Errorf("transfer ended cleanly with %d bytes (sha %s)", n, sum)
					} else {
						err = nil
					}
					errs <- err
				}()
			}
			// Every client has its response: each one leads or joined
			// the held fill when the fault strikes.
			waitUntil(t, "every client's response", func() bool { return responded.Load() == 5 })
			hold.Release()
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Errorf("a client did not see the failure: %v", err)
				}
			}
			if n := up.Counters.ObjectStoreGETsFor(blob.Digest.String()); n != 1 {
				t.Errorf("%d upstream fetches for 5 clients, want 1", n)
			}
			up.Faults.Reset()
			if files := filesUnder(t, filepath.Join(e.dataDirParent(), "cache")); len(files) != 0 {
				t.Errorf("cache holds files after a failed fill: %v", files)
			}
			sum, n, status, err := e.readBlob(path, tok, nil)
			if err != nil || sum != blob.Digest.String() || n != size {
				t.Fatalf("next pull: %v, %d bytes, %s", err, n, sum)
			}
			if !strings.Contains(status, "fwd=miss") {
				t.Errorf("next pull Cache-Status %q, want a miss", status)
			}
		})
	}
}

func (e *proxyEnv) dataDirParent() string { return filepath.Dir(e.dataDir) }

// filesUnder lists the data files under dir (blobs and temp files; tag
// records and empty directories do not count).
func filesUnder(t *testing.T, dir string) []string {
	var files []string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.Contains(p, string(filepath.Separator)+"tags"+string(filepath.Separator)) {
			files = append(files, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	return files
}

func TestCachedImagesPullWhenUpstreamFails(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 2, 16<<10)
	up.PushRandomImage(t, "team/other", "1", 1, 1024)
	e := startProxy(t, up, cachedBlock("tag_ttl 1h"))
	ref := e.ref("docker.example.test", "team/app:1")
	if err := e.pullImage(ref, nil, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()
	// The tag as these raw GETs ask for it (no Accept: a record of its own).
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	if resp, _ := e.get("GET", "/v2/team/app/manifests/1", tok, nil); resp.StatusCode != 200 {
		t.Fatalf("warming the tag: %d", resp.StatusCode)
	}

	for _, tc := range []struct {
		fault string
		// cacheStatus is what the tag's answer must say: Docker Hub
		// rate-limits GETs only, so its HEAD still revalidates the tag.
		cacheStatus string
	}{
		{"429 on manifest GETs", "docker_proxy; fwd=stale; fwd-status=200"},
		{"429 on every request", "docker_proxy; fwd=stale; fwd-status=429; detail=stale-if-error"},
		{"503", "docker_proxy; fwd=stale; fwd-status=503; detail=stale-if-error"},
		{"down", "docker_proxy; fwd=stale; detail=stale-if-error"},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			dockerproxy.AdvanceClock(time.Hour + time.Second) // the tag's record is stale again
			switch tc.fault {
			case "429 on manifest GETs":
				up.Faults.RateLimit(true, time.Minute)
			case "429 on every request":
				up.Faults.SetRegistryStatus(http.StatusTooManyRequests)
			case "503":
				up.Faults.SetRegistryStatus(http.StatusServiceUnavailable)
			case "down":
				if err := up.Faults.SetDown(true); err != nil {
					t.Fatal(err)
				}
			}
			defer up.Faults.Reset()
			tok := anonymousToken(t, e, "docker.example.test", "team/app")
			resp, _ := e.get("GET", "/v2/team/app/manifests/1", tok, nil)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != digest.String() {
				t.Errorf("cached tag: %d, digest %s, want 200 and %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), digest)
			}
			if got := resp.Header.Get("Cache-Status"); got != tc.cacheStatus {
				t.Errorf("Cache-Status %q, want %q", got, tc.cacheStatus)
			}
			if err := e.pullImage(ref, nil, img); err != nil {
				t.Errorf("cached image: %v", err)
			}
			tok = anonymousToken(t, e, "docker.example.test", "team/other")
			resp, body := e.get("GET", "/v2/team/other/manifests/1", tok, nil)
			if resp.StatusCode < 400 || !strings.Contains(body, `"errors"`) {
				t.Errorf("uncached image with upstream %s = %d %s, want a JSON error", tc.fault, resp.StatusCode, body)
			}
		})
	}

	// The tag moves upstream while manifest GETs are rate-limited: the HEAD
	// sees the new digest, the GET of its manifest answers 429, and the
	// last known manifest is served, marked stale.
	t.Run("tag moved, its new manifest 429", func(t *testing.T) {
		up.PushRandomImage(t, "team/app", "1", 1, 4<<10)
		dockerproxy.AdvanceClock(time.Hour + time.Second)
		up.Faults.RateLimit(true, time.Minute)
		defer up.Faults.Reset()
		tok := anonymousToken(t, e, "docker.example.test", "team/app")
		resp, _ := e.get("GET", "/v2/team/app/manifests/1", tok, nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != digest.String() {
			t.Errorf("tag whose new manifest is rate-limited: %d, digest %s, want 200 and the last known %s",
				resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), digest)
		}
		if got, want := resp.Header.Get("Cache-Status"), "docker_proxy; fwd=stale; fwd-status=429; detail=stale-if-error"; got != want {
			t.Errorf("Cache-Status %q, want %q", got, want)
		}
	})
}

func TestPrivateContentIsNotServedToOthers(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{RedirectBlobHEADs: true})
	up.SetPrivate("team/secret", "alice", "alice-pw")
	up.AddUser("mallory", "mallory-pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 32<<10)
	// The same layers in a public repository are fine to serve there.
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	ref := e.ref("docker.example.test", "team/secret:v1")
	alice := &authn.Basic{Username: "alice", Password: "alice-pw"}
	if err := e.pullImage(ref, alice, img); err != nil {
		t.Fatal(err)
	}
	fetched := up.Counters.ObjectStoreGETs()

	if err := e.pullImage(ref, nil, img); !isStatus(err, http.StatusUnauthorized) {
		t.Errorf("anonymous pull of cached private image: %v, want 401", err)
	}
	if err := e.pullImage(ref, &authn.Basic{Username: "mallory", Password: "mallory-pw"}, img); err == nil {
		t.Error("a user the upstream refuses got the cached private image")
	}
	// By digest too: the manifest and each layer.
	tok := anonymousToken(t, e, "docker.example.test", "team/secret")
	md, _ := img.Digest()
	for _, p := range append([]string{"/v2/team/secret/manifests/" + md.String()}, blobPaths("team/secret", layerDigests(t, img))...) {
		resp, body := e.get("GET", p, tok, nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("anonymous GET %s = %d (%d bytes), want 401", p, resp.StatusCode, len(body))
		}
		// A refusal reads as the upstream's, cached or not
		// (TestRefusalsDoNotTellWhatIsCached).
		if got, want := resp.Header.Get("Cache-Status"), "docker_proxy; fwd=miss; fwd-status=401"; got != want {
			t.Errorf("anonymous GET %s: Cache-Status %q, want %q", p, got, want)
		}
	}
	// Nor through a public repository's path.
	up.PushRandomImage(t, "team/public", "1", 1, 1024)
	tok = anonymousToken(t, e, "docker.example.test", "team/public")
	for _, p := range blobPaths("team/public", layerDigests(t, img)) {
		resp, _ := e.get("GET", p, tok, nil)
		if resp.StatusCode == http.StatusOK {
			t.Errorf("private layer served through a public repository: %s", p)
		}
	}

	if err := e.pullImage(ref, alice, img); err != nil {
		t.Errorf("accepted client: %v", err)
	}
	if n := up.Counters.ObjectStoreGETs() - fetched; n != 0 {
		t.Errorf("the accepted client's second pull fetched %d blobs upstream, want 0 (served from cache)", n)
	}

	// A newly admitted user. The registry answers blob HEADs with a
	// redirect to its object store: a redirect is not an answer, the
	// store's is. While the store fails, access cannot be confirmed;
	// once it answers, the cached layers are served without a fetch.
	up.SetPrivate("team/secret", "bob", "bob-pw")
	bob := &authn.Basic{Username: "bob", Password: "bob-pw"}
	up.Faults.SetObjectStoreStatus(http.StatusInternalServerError)
	if err := e.pullImage(ref, bob, img); !isStatus(err, http.StatusServiceUnavailable) {
		t.Errorf("newly admitted client while the object store fails: %v, want 503", err)
	}
	up.Faults.SetObjectStoreStatus(0)
	fetched = up.Counters.ObjectStoreGETs()
	if err := e.pullImage(ref, bob, img); err != nil {
		t.Errorf("newly admitted client: %v", err)
	}
	// Each layer's access check costs its first byte from the store.
	if n, layers := up.Counters.ObjectStoreGETs()-fetched, int64(len(layerDigests(t, img))); n > layers {
		t.Errorf("the newly admitted client's pull fetched %d times from the object store, want at most %d (one-byte access checks)", n, layers)
	}
}

func blobPaths(repo string, ds []v1.Hash) []string {
	var ps []string
	for _, d := range ds {
		ps = append(ps, "/v2/"+repo+"/blobs/"+d.String())
	}
	return ps
}

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

func dirSize(t *testing.T, dir string) int64 {
	var total int64
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.HasSuffix(p, ".json") {
			total += fi.Size()
		}
		return nil
	})
	return total
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

func TestFillGoesOnWhenFirstClientLeaves(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	const size = 8 << 20
	_, blob := up.PushGeneratedImage(t, "team/big", "1", 11, size)
	// Caddy's access log says when the proxy is done with a request.
	accessLog := filepath.Join(t.TempDir(), "access.log")
	e := startProxy(t, up, strings.Replace(cachedBlock("tag_ttl 5m"), "http://:{PORT} {",
		"http://:{PORT} {\n\tlog {\n\t\toutput file "+accessLog+"\n\t}", 1))
	tok := anonymousToken(t, e, "docker.example.test", "team/big")
	path := "/v2/team/big/blobs/" + blob.Digest.String()
	hold := up.Faults.HoldBlobs(1 << 20)

	// The first client starts the fill and reads a little.
	req, _ := http.NewRequest("GET", e.url("docker.example.test", path), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	first, err := (&http.Client{Transport: e.transport.Clone()}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	<-hold.Reached()
	// A second client joins the fill in progress: it has its response
	// (so its place in the fill) before the first one leaves.
	done := make(chan error, 1)
	var responded atomic.Int64
	var joinedStatus string
	go func() {
		sum, n, status, err := e.readBlobCounting(path, tok, nil, &responded)
		if err == nil && (sum != blob.Digest.String() || n != size) {
			err = fmt.Errorf("got %d bytes hashing to %s", n, sum)
		}
		joinedStatus = status
		done <- err
	}()
	waitUntil(t, "the second client's response", func() bool { return responded.Load() == 1 })
	if _, err := io.ReadFull(first.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	first.Body.Close() // the first client leaves mid-transfer
	// The upstream goes on only once the proxy is done with the first
	// client's request.
	waitUntil(t, "the first client's request to end", func() bool {
		b, _ := os.ReadFile(accessLog)
		return strings.Contains(string(b), path)
	})
	hold.Release()
	if err := <-done; err != nil {
		t.Fatalf("the joined client failed after the first one left: %v", err)
	}
	if !strings.Contains(joinedStatus, "collapsed") {
		t.Errorf("second client's Cache-Status %q, want it joined the fill (collapsed)", joinedStatus)
	}
	if n := up.Counters.ObjectStoreGETsFor(blob.Digest.String()); n != 1 {
		t.Errorf("%d upstream fetches, want 1", n)
	}
	// And the entry was kept.
	_, _, status, err := e.readBlob(path, tok, nil)
	if err != nil || status != "docker_proxy; hit" {
		t.Errorf("after the fill: %v, Cache-Status %q", err, status)
	}
}

func TestMetricsCountCacheOutcomes(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 4096)
	e := startProxy(t, up, `http://:{PORT} {
	handle /metrics {
		metrics
	}
	handle {
		docker_proxy {UPSTREAM} {
			cache {DIR}/cache
		}
	}
}`)
	for i := 0; i < 2; i++ {
		if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
			t.Fatal(err)
		}
	}
	// A response is counted just after the client has it: poll a little.
	wants := []string{`caddy_docker_proxy_responses_total{cache="hit"} 3`, `caddy_docker_proxy_responses_total{cache="miss"} 3`}
	var body string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		_, body = e.do("GET", "docker.example.test", "/metrics", nil)
		if strings.Contains(body, wants[0]) && strings.Contains(body, wants[1]) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range wants {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(body, "docker_proxy"))
		}
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestPrivateImageOfflineOnlyForConfirmedCredentials(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "alice-pw")
	up.AddUser("mallory", "mallory-pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 16<<10)
	cacheDir := t.TempDir()
	config := strings.Replace(cachedBlock("tag_ttl 1h"), "{DIR}/cache", cacheDir, 1)
	config = strings.Replace(config, "docker_proxy docker.io {", "docker_proxy docker.io {\n\t\tauth_key a-fixed-key-shared-by-instances", 1)
	e := startProxy(t, up, config)
	ref := e.ref("docker.example.test", "team/secret:v1")
	alice := &authn.Basic{Username: "alice", Password: "alice-pw"}
	if err := e.pullImage(ref, alice, img); err != nil {
		t.Fatal(err)
	}
	if err := e.pullImage(ref, &authn.Basic{Username: "mallory", Password: "mallory-pw"}, img); err == nil {
		t.Fatal("mallory pulled alice's image online")
	}
	// A config reload keeps what the upstream confirmed, with the store.
	e = startProxy(t, up, config)
	ref = e.ref("docker.example.test", "team/secret:v1")

	// Registry and token service down, tag stale.
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer up.Faults.Reset()
	dockerproxy.AdvanceClock(time.Hour + time.Second) // past tag_ttl, within the offline window
	if err := e.pullImage(ref, alice, img); err != nil {
		t.Errorf("alice, offline, credentials the upstream accepted before: %v", err)
	}
	if err := e.pullImage(ref, nil, img); err == nil {
		t.Error("anonymous client pulled the private image offline")
	}
	if err := e.pullImage(ref, &authn.Basic{Username: "alice", Password: "guess"}, img); err == nil {
		t.Error("a wrong password pulled the private image offline")
	}
	if err := e.pullImage(ref, &authn.Basic{Username: "mallory", Password: "mallory-pw"}, img); err == nil {
		t.Error("mallory pulled the private image offline")
	}
}

func TestTagListsServedStaleWhenUpstreamFails(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "1", 1, 1024)
	up.PushRandomImage(t, "team/app", "2", 1, 1024)
	up.SetPrivate("team/secret", "alice", "pw")
	up.PushRandomImage(t, "team/secret", "s1", 1, 1024)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	resp, fresh := e.get("GET", "/v2/team/app/tags/list", tok, nil)
	if resp.StatusCode != 200 || !strings.Contains(fresh, `"2"`) {
		t.Fatalf("online tags = %d %s", resp.StatusCode, fresh)
	}
	// Alice lists her private repository online: kept for her only.
	req, _ := http.NewRequest("GET", e.url("docker.example.test", "/v2/auth?scope=repository:team/secret:pull"), nil)
	req.SetBasicAuth("alice", "pw")
	aresp, err := (&http.Client{Transport: e.transport}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var atok struct{ Token string }
	_ = json.NewDecoder(aresp.Body).Decode(&atok)
	aresp.Body.Close()
	if resp, body := e.get("GET", "/v2/team/secret/tags/list", atok.Token, nil); resp.StatusCode != 200 || !strings.Contains(body, "s1") {
		t.Fatalf("alice's online tags = %d %s", resp.StatusCode, body)
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer up.Faults.Reset()
	resp, stale := e.get("GET", "/v2/team/app/tags/list", tok, nil)
	if resp.StatusCode != 200 || stale != fresh || !strings.Contains(resp.Header.Get("Cache-Status"), "stale-if-error") {
		t.Errorf("offline tags = %d %q %s", resp.StatusCode, resp.Header.Get("Cache-Status"), stale)
	}
	// Alice's kept list is not served to an anonymous client.
	resp, body := e.get("GET", "/v2/team/secret/tags/list", anonymousToken(t, e, "docker.example.test", "team/secret"), nil)
	if resp.StatusCode == 200 || strings.Contains(body, "s1") {
		t.Errorf("offline private tags = %d %s", resp.StatusCode, body)
	}
}

func TestConcurrentColdPullsByDigestCostOneGET(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 1024)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	// containerd's way: HEAD the tag for its digest, then GET by digest.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			desc, err := remote.Head(e.ref("docker.example.test", "team/app:1"), e.remoteOptions(nil)...)
			if err != nil {
				errs <- err
				return
			}
			got, err := remote.Image(e.ref("docker.example.test", "team/app@"+desc.Digest.String()), e.remoteOptions(nil)...)
			if err == nil {
				err = testupstream.SameImage(got, img)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := up.Counters.ManifestGETs(); n != 1 {
		t.Errorf("20 concurrent cold pulls by digest: %d manifest GETs upstream, want 1", n)
	}
}

func TestGetAfterHeadOfATag(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 1024)
	want, _ := img.Digest()
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	accept := http.Header{"Accept": {"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"}}
	// A HEAD resolves the tag (the record has no body yet) ...
	resp, _ := e.get("HEAD", "/v2/team/app/manifests/1", tok, accept)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("HEAD = %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
	// More HEADs within tag_ttl ask the upstream nothing: neither the tag
	// nor the proxy's access to it (the first HEAD confirmed both).
	before := up.Counters.RegistryRequests()
	for i := 0; i < 20; i++ {
		resp, _ := e.get("HEAD", "/v2/team/app/manifests/1", tok, accept)
		if resp.StatusCode != 200 || resp.Header.Get("Cache-Status") != "docker_proxy; hit" {
			t.Fatalf("HEAD %d = %d, Cache-Status %q", i, resp.StatusCode, resp.Header.Get("Cache-Status"))
		}
	}
	if n := up.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("20 HEADs of a fresh tag sent %d requests upstream, want 0", n)
	}
	// ... then GETs of the tag need the manifest itself, fetched once.
	for i := 0; i < 3; i++ {
		resp, body := e.get("GET", "/v2/team/app/manifests/1", tok, accept)
		raw, _ := img.RawManifest()
		if resp.StatusCode != 200 || body != string(raw) {
			t.Fatalf("GET %d after HEAD = %d %s", i, resp.StatusCode, body)
		}
	}
	if g := up.Counters.ManifestGETs(); g != 1 {
		t.Errorf("%d manifest GETs upstream, want 1", g)
	}
}

func TestAcceptSetsThatGetTheSameAnswerShareOneGET(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	idx := up.PushRandomIndex(t, "team/multi", "v1",
		v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"})
	img := up.PushRandomImage(t, "team/single", "v1", 1, 1024)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	idxDigest, _ := idx.Digest()
	imgDigest, _ := img.Digest()
	imgType, _ := img.MediaType()
	const (
		list   = "application/vnd.docker.distribution.manifest.list.v2+json"
		v2     = "application/vnd.docker.distribution.manifest.v2+json"
		oci    = "application/vnd.oci.image.manifest.v1+json"
		ociIdx = "application/vnd.oci.image.index.v1+json"
	)
	dockerLike := http.Header{"Accept": {strings.Join([]string{v2, list, oci, ociIdx}, ", ")}}
	containerdLike := http.Header{"Accept": {list, v2, ociIdx, oci, "*/*"}}
	noIndex := http.Header{"Accept": {string(imgType)}}
	get := func(repo string, h http.Header) string {
		tok := anonymousToken(t, e, "docker.example.test", repo)
		resp, _ := e.get("GET", "/v2/"+repo+"/manifests/v1", tok, h)
		if resp.StatusCode != 200 {
			t.Fatalf("%s %v: %d", repo, h, resp.StatusCode)
		}
		return resp.Header.Get("Docker-Content-Digest")
	}
	// An index answers every set that accepts its type.
	if d := get("team/multi", dockerLike); d != idxDigest.String() {
		t.Errorf("docker-like: %s", d)
	}
	if d := get("team/multi", containerdLike); d != idxDigest.String() {
		t.Errorf("containerd-like: %s", d)
	}
	if n := up.Counters.ManifestGETsFor("team/multi"); n != 1 {
		t.Errorf("index tag: %d GETs for two clients' Accept sets, want 1", n)
	}
	// A client that accepts no index gets the platform manifest: fetched.
	if d := get("team/multi", noIndex); d == idxDigest.String() {
		t.Error("an index was served to a client that does not accept indexes")
	}
	// An image manifest seen by a client that accepts every index type
	// answers the others that accept its type...
	if d := get("team/single", dockerLike); d != imgDigest.String() {
		t.Errorf("single, docker-like: %s", d)
	}
	if d := get("team/single", noIndex); d != imgDigest.String() {
		t.Errorf("single, no index: %s", d)
	}
	if n := up.Counters.ManifestGETsFor("team/single"); n != 1 {
		t.Errorf("image tag: %d GETs, want 1", n)
	}
	// ... but one seen by a client that accepts no index does not answer a
	// client that does (the tag could have been an index).
	up.PushRandomImage(t, "team/other", "v1", 1, 1024)
	get("team/other", noIndex)
	get("team/other", dockerLike)
	if n := up.Counters.ManifestGETsFor("team/other"); n != 2 {
		t.Errorf("record from a client without index types reused for one with: %d GETs, want 2", n)
	}
}

func TestReloadAppliesANewMaxSize(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	cacheDir := t.TempDir()
	block := func(maxSize string) string {
		return strings.Replace(cachedBlock("tag_ttl 5m\n\t\t\tmax_size "+maxSize), "{DIR}/cache", cacheDir, 1)
	}
	e := startProxy(t, up, block("10MiB"))
	for i := 0; i < 4; i++ {
		img := up.PushRandomImage(t, fmt.Sprintf("team/app%d", i), "1", 1, 300<<10)
		if err := e.pullImage(e.ref("docker.example.test", fmt.Sprintf("team/app%d:1", i)), nil, img); err != nil {
			t.Fatal(err)
		}
	}
	// The last layer is committed a moment after its client has it.
	waitUntil(t, "over 1 MiB in the cache before the reload", func() bool {
		return dirSize(t, filepath.Join(cacheDir, "blobs")) >= 1<<20
	})
	startProxy(t, up, block("512KiB")) // a reload over the same directory
	if used := dirSize(t, filepath.Join(cacheDir, "blobs")); used > 512<<10 {
		t.Errorf("after a reload with max_size 512KiB the cache holds %d bytes", used)
	}
}
