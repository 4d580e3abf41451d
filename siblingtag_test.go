package dockerproxy_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-dockerproxy/dockerproxy"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestStaleTagOfAnotherAcceptSet: a tag one client cached answers a
// client with another Accept set after tag_ttl too: revalidated with a
// HEAD (not a GET, which Docker Hub counts) while the upstream is up, and
// served stale while it is down.
func TestStaleTagOfAnotherAcceptSet(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 4<<10)
	other := up.PushRandomImage(t, "team/other", "1", 1, 4<<10)
	e := startProxy(t, up, cachedBlock("tag_ttl 1h"))
	// The first client accepts every manifest and index type of Docker
	// and OCI; go-containerregistry's remote also accepts schema 1.
	accept := http.Header{"Accept": {"application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, " +
		"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"}}
	for _, repo := range []string{"team/app", "team/other"} {
		tok := anonymousToken(t, e, "docker.example.test", repo)
		if resp, _ := e.get("GET", "/v2/"+repo+"/manifests/1", tok, accept); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", repo, resp.StatusCode)
		}
	}

	dockerproxy.AdvanceClock(2 * time.Hour)
	up.Counters.Reset()
	if err := e.pullImage(e.ref("docker.example.test", "team/other:1"), nil, other); err != nil {
		t.Fatal(err)
	}
	if gets, heads := up.Counters.ManifestGETsFor("team/other"), up.Counters.ManifestHEADsFor("team/other"); gets != 0 || heads != 1 {
		t.Errorf("stale tag of another Accept set, upstream up: %d manifest GETs and %d HEADs, want 0 and 1", gets, heads)
	}

	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	// The tag, answered from the cache (only the first client's manifest
	// GET filled it: no blob of team/app is cached).
	desc, err := remote.Get(e.ref("docker.example.test", "team/app:1"), e.remoteOptions(nil)...)
	if err != nil {
		t.Fatalf("stale tag of another Accept set, upstream down: %v", err)
	}
	if want, _ := img.Digest(); desc.Digest != want {
		t.Errorf("stale tag of another Accept set, upstream down: digest %s, want %s", desc.Digest, want)
	}
}
