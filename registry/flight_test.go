package registry

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// TestRoundAfterARoundAsksNothing: a request that found a manifest
// missing, and starts its upstream round just after another round stored
// it, takes the stored manifest instead of a second GET (Docker Hub counts
// every one); its access is still checked as for any cached entry.
func TestRoundAfterARoundAsksNothing(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 1024)
	p, _ := newTestProxy(t, up, time.Hour)
	d, _ := img.Digest()
	u, _ := p.Router.ForHost("any.example.test")
	target := target{up: u, prefix: "/v2/"}
	req := APIPath{Kind: KindManifest, Name: "team/app", Digest: digest.Digest(d.String())}
	r := httptest.NewRequest(http.MethodGet, "/v2/team/app/manifests/"+d.String(), nil)
	c := &pull{p: p, r: r, t: target, path: req, grant: tokenauth.Grant{}}
	first, ok := c.fetchByDigest(req.Digest)
	if !ok || first.err != nil || first.cached || up.Counters.ManifestGETs() != 1 {
		t.Fatalf("first round: %+v, ok %v, %d upstream GETs; want a fetch", first, ok, up.Counters.ManifestGETs())
	}
	// The second request looked at the cache before the first round
	// stored the manifest, and starts its own round now.
	second, ok := c.fetchByDigest(req.Digest)
	if !ok || !second.cached || string(second.m.body) != string(first.m.body) {
		t.Fatalf("second round: %+v, ok %v; want the stored manifest", second, ok)
	}
	if n := up.Counters.ManifestGETs(); n != 1 {
		t.Errorf("%d manifest GETs upstream, want 1", n)
	}
}
