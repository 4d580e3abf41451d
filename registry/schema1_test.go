package registry

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testdistribution"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

const mediaTypeSchema2 = "application/vnd.docker.distribution.manifest.v2+json"

// proxyFor is a proxy (cache on) in front of the registry at upstreamURL.
func proxyFor(t *testing.T, upstreamURL string) (*Proxy, *httptest.Server) {
	t.Helper()
	// newTestProxyWith only needs the upstream's URL.
	return newTestProxyWith(t, &testupstream.Upstream{URL: upstreamURL}, time.Hour, blobcache.Options{}, zap.NewNop())
}

// pushToDistribution pushes a small schema 2 image as repo:tag and returns
// its digest.
func pushToDistribution(t *testing.T, reg *testdistribution.Server, repoTag string) digest.Digest {
	t.Helper()
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(reg.Host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return digest.Digest(d.String())
}

func requestManifest(t *testing.T, method, url, accept string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// TestSchema1SignedManifestPassesThrough: distribution 2.8 answers a client
// that sends no Accept with a schema 1 signed manifest, converted and
// signed anew for each request, whose Docker-Content-Digest is that of the
// signed payload. The proxy serves it as the upstream does (it used to
// answer 502 "upstream unavailable"), says it did not keep it, and keeps
// nothing under a digest the bytes do not hash to; clients that accept
// schema 2 are cached as ever.
func TestSchema1SignedManifestPassesThrough(t *testing.T) {
	reg := testdistribution.Start(t)
	schema2 := pushToDistribution(t, reg, "team/app:1")
	p, srv := proxyFor(t, reg.URL)

	// The upstream itself, without Accept: schema 1, digest of the payload.
	resp, body := requestManifest(t, "GET", reg.URL+"/v2/team/app/manifests/1", "")
	if !isSchema1Signed(resp.Header.Get("Content-Type")) {
		t.Fatalf("docker-registry answered %s without Accept; the test needs schema 1", resp.Header.Get("Content-Type"))
	}
	upstreamDigest := digest.Digest(resp.Header.Get("Docker-Content-Digest"))
	if digest.FromBytes(body) == upstreamDigest {
		t.Fatal("the upstream's schema 1 digest is that of its bytes; the test needs a signed payload digest")
	}

	for i := 0; i < 2; i++ {
		resp, body = requestManifest(t, "GET", srv.URL+"/v2/team/app/manifests/1", "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %d without Accept through the proxy: %s %s", i, resp.Status, body)
		}
		if !isSchema1Signed(resp.Header.Get("Content-Type")) {
			t.Errorf("Content-Type %q, want schema 1 signed", resp.Header.Get("Content-Type"))
		}
		got := digest.Digest(resp.Header.Get("Docker-Content-Digest"))
		payload, ok := schema1Payload(body)
		if !ok || digest.FromBytes(payload) != got || got != upstreamDigest {
			t.Errorf("Docker-Content-Digest %s; payload ok %v; want the upstream's %s, the digest of the payload", got, ok, upstreamDigest)
		}
		if cs := resp.Header.Get("Cache-Status"); cs != resultSchema1.CacheStatus() {
			t.Errorf("Cache-Status %q, want %q", cs, resultSchema1.CacheStatus())
		}
		if p.Cache.Store.Contains(got) {
			t.Error("the cache holds a schema 1 manifest under a digest its bytes do not hash to")
		}
	}

	// A HEAD without Accept, then a GET: the HEAD leaves no record that
	// would send the GET to the cache or to a digest upstream.
	resp, _ = requestManifest(t, "HEAD", srv.URL+"/v2/team/app/manifests/1", "")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != upstreamDigest.String() {
		t.Errorf("HEAD without Accept: %s, digest %s", resp.Status, resp.Header.Get("Docker-Content-Digest"))
	}
	resp, body = requestManifest(t, "GET", srv.URL+"/v2/team/app/manifests/1", "")
	if resp.StatusCode != http.StatusOK || !isSchema1Signed(resp.Header.Get("Content-Type")) {
		t.Errorf("GET after HEAD without Accept: %s %s", resp.Status, body)
	}

	// Schema 2 clients: cached as before.
	for i, want := range []string{resultMiss.CacheStatus(), resultHit.CacheStatus()} {
		resp, body = requestManifest(t, "GET", srv.URL+"/v2/team/app/manifests/1", mediaTypeSchema2)
		if resp.StatusCode != http.StatusOK || digest.FromBytes(body) != schema2 || resp.Header.Get("Cache-Status") != want {
			t.Errorf("schema 2 GET %d: %s, digest %s, Cache-Status %q; want %s and %q", i, resp.Status, digest.FromBytes(body), resp.Header.Get("Cache-Status"), schema2, want)
		}
	}
}

// TestManifestDigestMismatchIsManifestInvalid: an upstream whose
// Docker-Content-Digest matches neither the bytes nor (for schema 1) the
// signed payload gets the client a clear MANIFEST_INVALID, not "upstream
// unavailable", and nothing is kept.
func TestManifestDigestMismatchIsManifestInvalid(t *testing.T) {
	reg := testdistribution.Start(t)
	pushToDistribution(t, reg, "team/app:1")
	u, _ := url.Parse(reg.URL)
	wrong := digest.FromString("not this manifest")
	liar := httputil.NewSingleHostReverseProxy(u)
	liar.ModifyResponse = func(resp *http.Response) error {
		if strings.Contains(resp.Request.URL.Path, "/manifests/") {
			resp.Header.Set("Docker-Content-Digest", wrong.String())
		}
		return nil
	}
	front := httptest.NewServer(liar)
	t.Cleanup(front.Close)
	p, srv := proxyFor(t, front.URL)

	for _, accept := range []string{"", mediaTypeSchema2} {
		resp, body := requestManifest(t, "GET", srv.URL+"/v2/team/app/manifests/1", accept)
		var e struct {
			Errors []struct{ Code string } `json:"errors"`
		}
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode != http.StatusBadGateway || len(e.Errors) != 1 || e.Errors[0].Code != CodeManifestInvalid {
			t.Errorf("Accept %q: %s %s; want 502 MANIFEST_INVALID", accept, resp.Status, body)
		}
	}
	if p.Cache.Store.Contains(wrong) {
		t.Error("the cache keeps a manifest under a digest that does not match it")
	}
}

// FuzzSchema1Payload: any body, never a panic; a payload found is the
// body's first formatLength bytes and a tail, and valid JSON.
func FuzzSchema1Payload(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":1,"name":"a","signatures":[{"protected":"eyJmb3JtYXRMZW5ndGgiOjE3LCJmb3JtYXRUYWlsIjoiZlEifQ"}]}`))
	f.Add([]byte(`{"schemaVersion":1,"signatures":[{"protected":"e30"}]}`))
	f.Add([]byte(`{"schemaVersion":1,"signatures":[]}`))
	f.Add([]byte(`{"schemaVersion":2}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		payload, ok := schema1Payload(body)
		if !ok {
			return
		}
		if !json.Valid(payload) {
			t.Fatalf("payload is not JSON: %q", payload)
		}
		// The payload starts with a non-empty prefix of the body.
		n := 0
		for n < len(payload) && n < len(body) && payload[n] == body[n] {
			n++
		}
		if n == 0 {
			t.Fatalf("payload %q shares no prefix with the body", payload)
		}
	})
}
