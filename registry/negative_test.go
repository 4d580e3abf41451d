package registry

import (
	"net/http"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestNegativeTTL: with negative_ttl, the upstream's 404 for a tag is
// answered again without asking, for that identity only, until it ends;
// a tag pushed meanwhile appears then. Off (0), every request asks.
func TestNegativeTTL(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Minute} {
		t.Run("negative_ttl="+ttl.String(), func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{})
			up.AddUser("carol", "carol-pw")
			up.PushRandomImage(t, "team/app", "v1", 1, 512)
			p, srv := newTestProxy(t, up, time.Minute)
			p.Cache.NegativeTTL = ttl
			clock := &testClock{}
			p.Cache.Now = clock.now

			url := manifestURL(srv.URL, "team/app", "next")
			resp, body := requestManifest(t, http.MethodGet, url, acceptImage)
			if resp.StatusCode != http.StatusNotFound || registryErrorCode(t, body) != CodeManifestUnknown {
				t.Fatalf("a missing tag: %s %s", status(resp), body)
			}
			asked := up.Counters.ManifestGETsFor("team/app") + up.Counters.ManifestHEADsFor("team/app")
			for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodGet} {
				resp, body := requestManifest(t, method, url, acceptImage)
				if resp.StatusCode != http.StatusNotFound {
					t.Errorf("%s of the missing tag again: %s", method, status(resp))
				}
				if method == http.MethodGet && registryErrorCode(t, body) != CodeManifestUnknown {
					t.Errorf("%s of the missing tag again: %s", method, body)
				}
				if remembered := strings.Contains(resp.Header.Get("Cache-Status"), "detail=negative"); remembered != (ttl > 0) {
					t.Errorf("%s of the missing tag again: Cache-Status %q", method, resp.Header.Get("Cache-Status"))
				}
			}
			again := up.Counters.ManifestGETsFor("team/app") + up.Counters.ManifestHEADsFor("team/app") - asked
			if want := map[bool]int64{true: 0, false: 3}[ttl > 0]; again != want {
				t.Errorf("%d upstream requests for the missing tag again, want %d", again, want)
			}

			// Another identity asks for itself.
			before := up.Counters.ManifestGETsFor("team/app") + up.Counters.ManifestHEADsFor("team/app")
			ref, _ := name.ParseReference(path.Join(strings.TrimPrefix(srv.URL, "http://"), "team/app:next"), name.Insecure)
			if _, err := remote.Get(ref, remote.WithAuth(&authn.Basic{Username: "carol", Password: "carol-pw"})); err == nil {
				t.Error("another identity got the missing tag")
			}
			if up.Counters.ManifestGETsFor("team/app")+up.Counters.ManifestHEADsFor("team/app") == before {
				t.Error("another identity's request for the missing tag did not reach the upstream")
			}

			// Pushed now: it appears once negative_ttl is over.
			up.PushRandomImage(t, "team/app", "next", 1, 512)
			clock.advance(ttl + time.Second)
			if resp, _ := requestManifest(t, http.MethodGet, url, acceptImage); resp.StatusCode != http.StatusOK {
				t.Errorf("the tag pushed meanwhile, after negative_ttl: %s", status(resp))
			}
		})
	}
}
