package registry

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testdistribution"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestReferrersKeptStaleWithTheirNotFound: a registry without the
// referrers API (distribution) answers 404 for /referrers/<digest>, and
// clients fall back to the sha256-<digest> tag on that 404. With the
// upstream gone, the proxy serves the same 404 (stale), not a 503 that
// would end the client's discovery.
func TestReferrersKeptStaleWithTheirNotFound(t *testing.T) {
	reg := testdistribution.Start(t)
	d := pushToDistribution(t, reg, "team/signed:v1")
	_, srv := newTestProxyAt(t, reg.URL)
	url := srv.URL + "/v2/team/signed/referrers/" + d.String()
	online, onlineBody, err := get(url)
	if err != nil || online.StatusCode != http.StatusNotFound {
		t.Fatalf("referrers online: %s %v, want the upstream's 404", status(online), err)
	}
	reg.Stop()
	resp, body, err := get(url)
	if err != nil || resp.StatusCode != http.StatusNotFound || !strings.Contains(resp.Header.Get("Cache-Status"), "stale") {
		t.Fatalf("referrers with the upstream stopped: %s %v, want its 404, stale", status(resp), err)
	}
	if string(body) != string(onlineBody) || resp.Header.Get("Content-Type") != online.Header.Get("Content-Type") {
		t.Errorf("stale 404 %q (%s), want %q (%s) as the upstream sent it", body, resp.Header.Get("Content-Type"), onlineBody, online.Header.Get("Content-Type"))
	}
}

// TestReferrersKeptStale: a registry's referrers index is served stale
// when the upstream cannot be reached.
func TestReferrersKeptStale(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/signed", "v1", 1, 512)
	d, _ := img.Digest()
	_, srv := newTestProxy(t, up, time.Minute)
	url := srv.URL + "/v2/team/signed/referrers/" + d.String()
	online, onlineBody, err := get(url)
	if err != nil || online.StatusCode != http.StatusOK {
		t.Fatalf("referrers online: %s %v", status(online), err)
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer up.Faults.Reset()
	resp, body, err := get(url)
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != string(onlineBody) || !strings.Contains(resp.Header.Get("Cache-Status"), "stale") {
		t.Errorf("referrers with the upstream down: %s %q %v, want %q, stale", status(resp), body, err, onlineBody)
	}
}

// TestMissingTagServedStale: a tag the upstream said it does not have is
// answered with that 404 when the upstream fails, not with a 503: clients
// that look for a tag and fall back when it is missing (oras looking for
// the sha256-<digest> tag of referrers) work offline as online.
func TestMissingTagServedStale(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "v1", 1, 512)
	_, srv := newTestProxy(t, up, time.Minute)
	missing := manifestURL(srv.URL, "team/app", "sha256-0123")
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		if resp, _ := requestManifest(t, method, missing, acceptImage); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("%s of a missing tag online: %s", method, status(resp))
		}
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer up.Faults.Reset()
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		resp, body := requestManifest(t, method, missing, acceptImage)
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(resp.Header.Get("Cache-Status"), "stale") {
			t.Errorf("%s of the missing tag offline: %s, want its 404, stale", method, status(resp))
		}
		if method == http.MethodGet && registryErrorCode(t, body) != CodeManifestUnknown {
			t.Errorf("GET of the missing tag offline: %s", body)
		}
	}
	// A tag never asked for is not known to be missing.
	if resp, _ := requestManifest(t, http.MethodGet, manifestURL(srv.URL, "team/app", "never-asked"), acceptImage); resp.StatusCode == http.StatusNotFound {
		t.Errorf("a tag never asked for, offline: %s, want an upstream error", status(resp))
	}
}

// TestSignaturesFoundOffline: a signature attached to an image on
// distribution (2.8, and v3: neither has the referrers API) is pushed by
// go-containerregistry as a registry client does, under the fallback tag
// sha256-<digest>. Discovery through the proxy, as oras, cosign and
// notation do it (the referrers API's 404, then the tag), finds it online
// and again with the upstream stopped.
func TestSignaturesFoundOffline(t *testing.T) {
	for _, reg := range []struct {
		name  string
		start func(testing.TB) *testdistribution.Server
	}{
		{"distribution 2.8", testdistribution.Start},
		{"distribution v3", testdistribution.StartV3},
	} {
		t.Run(reg.name, func(t *testing.T) {
			up := reg.start(t)
			subject, err := random.Image(512, 1)
			if err != nil {
				t.Fatal(err)
			}
			subjectRef, err := name.ParseReference(up.Host+"/team/signed:v1", name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.Write(subjectRef, subject); err != nil {
				t.Fatal(err)
			}
			sd, _ := subject.Digest()
			raw, _ := subject.RawManifest()
			mt, _ := subject.MediaType()
			sig, err := random.Image(64, 1)
			if err != nil {
				t.Fatal(err)
			}
			sig = mutate.MediaType(sig, types.OCIManifestSchema1)
			sig = mutate.ConfigMediaType(sig, "application/vnd.example.signature")
			sig = mutate.Subject(sig, v1.Descriptor{MediaType: mt, Digest: sd, Size: int64(len(raw))}).(v1.Image)
			sigDigest, _ := sig.Digest()
			sigRef, err := name.ParseReference(up.Host+"/team/signed@"+sigDigest.String(), name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			// Without the referrers API, the client keeps the
			// sha256-<digest> tag's index of referrers itself.
			if err := remote.Write(sigRef, sig); err != nil {
				t.Fatal(err)
			}

			_, srv := newTestProxyAt(t, up.URL)
			through, err := name.NewDigest(strings.TrimPrefix(srv.URL, "http://")+"/team/signed@"+sd.String(), name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			discover := func(when string) {
				t.Helper()
				idx, err := remote.Referrers(through)
				if err != nil {
					t.Fatalf("%s: %v", when, err)
				}
				im, err := idx.IndexManifest()
				if err != nil {
					t.Fatalf("%s: %v", when, err)
				}
				if len(im.Manifests) != 1 || im.Manifests[0].Digest != sigDigest {
					t.Fatalf("%s: referrers %+v, want the signature %s", when, im.Manifests, sigDigest)
				}
			}
			discover("online")
			up.Stop()
			discover("with the upstream stopped")
		})
	}
}
