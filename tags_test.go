package dockerproxy_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-dockerproxy/dockerproxy"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

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
