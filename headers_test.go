package dockerproxy_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

func TestBlobRedirectFollowedWithoutCredentials(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 1, 256<<10)
	e := startProxy(t, up, domainBlock)
	before, beforeReqs := up.Counters.ObjectStoreGETs(), up.Counters.ObjectStoreRequests()
	// The object store fails any request with Authorization: the pull
	// works only if the proxy followed the 307 with a clean GET.
	if err := e.pullImage(e.ref("docker.example.test", "team/secret:v1"), &authn.Basic{Username: "alice", Password: "pw"}, img); err != nil {
		t.Fatal(err)
	}
	if up.Counters.ObjectStoreGETs() == before {
		t.Error("blobs did not come through the object store redirect")
	}
	served, reqs := up.Counters.ObjectStoreGETs()-before, up.Counters.ObjectStoreRequests()-beforeReqs
	if served != reqs {
		t.Errorf("object store refused %d of %d requests (credentials sent to the redirect target?)", reqs-served, reqs)
	}
}

// headerTransport adds headers to every request, as a browser, a CI
// runner or a corporate proxy in front of a registry client may.
type headerTransport struct {
	base   http.RoundTripper
	header http.Header
}

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, vs := range h.header {
		r.Header[k] = vs
	}
	return h.base.RoundTrip(r)
}

// TestClientHeadersAndCredentialsGoOnlyWhereTheyBelong: a logged-in client
// pulls, sending cookies and a header of its own. Its Basic credentials
// reach the upstream's realm and nothing else; the blob redirect target
// gets none of the client's headers but Range.
func TestClientHeadersAndCredentialsGoOnlyWhereTheyBelong(t *testing.T) {
	for _, c := range []struct{ name, block string }{
		{"cache off", domainBlock},
		{"cache on", cachedBlock("")},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{RecordRequests: true})
			up.SetPrivate("team/secret", "alice", "s3cret-pass")
			img := up.PushRandomImage(t, "team/secret", "v1", 2, 64<<10)
			e := startProxy(t, up, c.block)
			const cookie, clientSecret, agent = "session=cookie-value", "client-secret-value", "client-agent/1.0"
			extra := http.Header{"Cookie": {cookie}, "X-Client-Secret": {clientSecret}}

			// A real client logs in and pulls...
			opts := []remote.Option{
				remote.WithTransport(headerTransport{base: e.transport, header: extra}),
				remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret-pass"}),
				remote.WithUserAgent(agent),
			}
			got, err := remote.Image(e.ref("docker.example.test", "team/secret:v1"), opts...)
			if err == nil {
				err = testupstream.SameImage(got, img)
			}
			if err != nil {
				t.Fatalf("logged-in pull: %v", err)
			}
			// ...and asks for a range of a blob, with its proxy token.
			h := http.Header{"Authorization": {"Bearer " + loginToken(t, e, "alice", "s3cret-pass", "team/secret")},
				"Range": {"bytes=10-99"}, "User-Agent": {agent}}
			for k, v := range extra {
				h[k] = v
			}
			layers := layerDigests(t, img)
			resp, body := e.do("GET", "docker.example.test", "/v2/team/secret/blobs/"+layers[1].String(), h)
			if resp.StatusCode != http.StatusPartialContent || len(body) != 90 {
				t.Fatalf("ranged blob = %d, %d bytes", resp.StatusCode, len(body))
			}

			basic := base64.StdEncoding.EncodeToString([]byte("alice:s3cret-pass"))
			// dp1. starts the proxy's own tokens, which never leave it.
			secrets := []string{"s3cret-pass", basic, "cookie-value", clientSecret, "dp1."}
			// The client's User-Agent goes to the registry after the
			// proxy's (registries count clients by it), nowhere else.
			clientAgent := []string{agent, "go-containerregistry"}
			leaked := func(r testupstream.Recorded, values []string) []string {
				var found []string
				for _, s := range values {
					if strings.Contains(r.URI, s) {
						found = append(found, s+" in the URI")
					}
					for k, vs := range r.Header {
						for _, v := range vs {
							if strings.Contains(v, s) {
								found = append(found, s+" in "+k)
							}
						}
					}
				}
				return found
			}

			objects := up.Requests(testupstream.ObjectStoreListener)
			if len(objects) == 0 {
				t.Fatal("no request reached the object store")
			}
			ranged := false
			for _, r := range objects {
				for k := range r.Header {
					switch k {
					case "Range":
						ranged = ranged || r.Header.Get("Range") == "bytes=10-99"
					case "User-Agent", "Accept-Encoding": // the proxy's own
					default:
						t.Errorf("the object store got %s: %q", k, r.Header.Values(k))
					}
				}
				if found := leaked(r, append(secrets, clientAgent...)); len(found) > 0 {
					t.Errorf("the object store got %v", found)
				}
			}
			// The cache fetches whole blobs and serves ranges itself.
			if c.name == "cache off" && !ranged {
				t.Error("the client's Range did not reach the object store")
			}

			for _, r := range up.Requests(testupstream.RegistryListener) {
				for _, k := range []string{"Cookie", "X-Client-Secret"} {
					if r.Header.Get(k) != "" {
						t.Errorf("%s %s: the registry got the client's %s", r.Method, r.URI, k)
					}
				}
				if found := leaked(r, secrets); len(found) > 0 {
					t.Errorf("%s %s: the registry got %v", r.Method, r.URI, found)
				}
			}

			realm := up.Requests(testupstream.RealmListener)
			loggedIn := false
			for _, r := range realm {
				loggedIn = loggedIn || r.Header.Get("Authorization") == "Basic "+basic
				if found := leaked(r, []string{"cookie-value", clientSecret, "dp1."}); len(found) > 0 {
					t.Errorf("the realm got %v", found)
				}
			}
			if !loggedIn {
				t.Errorf("the client's credentials never reached the realm (%d requests)", len(realm))
			}
		})
	}
}

// TestHopByHopResponseHeadersStayUpstream: headers that belong to the
// upstream's connection (Connection and the ones it names, Keep-Alive,
// Proxy-Authenticate, ...) never reach the client, from the registry or
// from the blob redirect target.
func TestHopByHopResponseHeadersStayUpstream(t *testing.T) {
	hop := http.Header{
		"Connection":         {"X-Foo, X-Bar"},
		"X-Foo":              {"1"},
		"X-Bar":              {"2"},
		"Keep-Alive":         {"timeout=5, max=100"},
		"Proxy-Authenticate": {`Basic realm="upstream-proxy"`},
		"Proxy-Connection":   {"keep-alive"},
		"Upgrade":            {"h2c"},
	}
	for _, c := range []struct{ name, block string }{
		{"cache off", domainBlock},
		{"cache on", cachedBlock("")},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{})
			img := up.PushRandomImage(t, "team/app", "1", 1, 4096)
			up.AddResponseHeaders(testupstream.RegistryListener, hop)
			up.AddResponseHeaders(testupstream.ObjectStoreListener, hop)
			// The upstream does send them, or this test proves nothing.
			resp, err := http.Get(up.URL + "/v2/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			for k := range hop {
				if resp.Header.Get(k) == "" {
					t.Fatalf("the upstream does not send %s: %v", k, resp.Header)
				}
			}

			e := startProxy(t, up, c.block)
			tok := anonymousToken(t, e, "docker.example.test", "team/app")
			d, _ := img.Digest()
			paths := []string{"/v2/team/app/manifests/1", "/v2/team/app/manifests/" + d.String(), "/v2/team/app/tags/list"}
			for _, l := range layerDigests(t, img) {
				paths = append(paths, "/v2/team/app/blobs/"+l.String())
			}
			accept := http.Header{"Accept": {"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"}}
			for _, path := range paths {
				for _, method := range []string{"HEAD", "GET"} {
					resp, _ := e.get(method, path, tok, accept)
					if resp.StatusCode != http.StatusOK {
						t.Errorf("%s %s = %d", method, path, resp.StatusCode)
					}
					for k := range hop {
						if v := resp.Header.Values(k); len(v) > 0 {
							t.Errorf("%s %s: the client got %s: %q", method, path, k, v)
						}
					}
				}
			}
		})
	}
}

// TestManifestPassThroughHeaders: with the cache off, manifests come from
// the upstream with the headers clients check (type, digest, length), an
// OCI manifest as such, and a HEAD stays a HEAD, which Docker Hub does not
// count against the pull limit.
func TestManifestPassThroughHeaders(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	docker := up.PushRandomImage(t, "team/app", "docker", 1, 2048)
	oci := mutate.MediaType(docker, types.OCIManifestSchema1)
	oci = mutate.ConfigMediaType(oci, types.OCIConfigJSON)
	up.PushImage(t, "team/app", "oci", oci)
	e := startProxy(t, up, domainBlock)
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	accept := http.Header{"Accept": {string(types.OCIManifestSchema1) + ", " + string(types.DockerManifestSchema2)}}

	for _, c := range []struct {
		ref       string
		img       v1.Image
		mediaType types.MediaType
	}{
		{"oci", oci, types.OCIManifestSchema1},
		{"docker", docker, types.DockerManifestSchema2},
	} {
		raw, _ := c.img.RawManifest()
		d, _ := c.img.Digest()
		for _, ref := range []string{c.ref, d.String()} {
			path := "/v2/team/app/manifests/" + ref
			gets, heads := up.Counters.ManifestGETs(), up.Counters.ManifestHEADs()
			resp, body := e.get("HEAD", path, tok, accept)
			if n := up.Counters.ManifestGETs() - gets; n != 0 || up.Counters.ManifestHEADs()-heads != 1 {
				t.Errorf("HEAD %s made %d manifest GETs and %d HEADs upstream, want 0 and 1", ref, n, up.Counters.ManifestHEADs()-heads)
			}
			checkManifestHeaders(t, "HEAD "+ref, resp, c.mediaType, d.String(), len(raw))
			if body != "" {
				t.Errorf("HEAD %s has a body", ref)
			}
			resp, body = e.get("GET", path, tok, accept)
			checkManifestHeaders(t, "GET "+ref, resp, c.mediaType, d.String(), len(raw))
			if body != string(raw) {
				t.Errorf("GET %s: the body is not the upstream's manifest", ref)
			}
		}
	}
}

func checkManifestHeaders(t *testing.T, what string, resp *http.Response, mediaType types.MediaType, digest string, size int) {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("%s = %d", what, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != string(mediaType) {
		t.Errorf("%s: Content-Type %q, want %s", what, ct, mediaType)
	}
	if dcd := resp.Header.Get("Docker-Content-Digest"); dcd != digest {
		t.Errorf("%s: Docker-Content-Digest %q, want %s", what, dcd, digest)
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(size) {
		t.Errorf("%s: Content-Length %q, want %d", what, cl, size)
	}
}

func TestRangeAndTagsPagination(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 10000)
	for _, tag := range []string{"2", "3", "4"} {
		up.PushImage(t, "team/app", tag, img)
	}
	e := startProxy(t, up, domainBlock)
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	auth := http.Header{"Authorization": {"Bearer " + tok}}

	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	all, _ := io.ReadAll(rc)
	h := auth.Clone()
	h.Set("Range", "bytes=100-199")
	resp, body := e.do("GET", "docker.example.test", "/v2/team/app/blobs/"+ld.String(), h)
	if resp.StatusCode != http.StatusPartialContent || body != string(all[100:200]) {
		t.Errorf("Range = %d, %d bytes", resp.StatusCode, len(body))
	}

	resp, body = e.do("GET", "docker.example.test", "/v2/team/app/tags/list?n=2", auth)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"1"`) || !strings.Contains(body, `"2"`) || strings.Contains(body, `"3"`) {
		t.Fatalf("tags page 1 = %d %s", resp.StatusCode, body)
	}
	link := resp.Header.Get("Link")
	if !strings.HasPrefix(link, "</v2/team/app/tags/list?") || !strings.Contains(link, `rel="next"`) {
		t.Fatalf("Link = %q", link)
	}
	next := link[1:strings.IndexByte(link, '>')]
	resp, body = e.do("GET", "docker.example.test", next, auth)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"3"`) {
		t.Errorf("tags page 2 = %d %s", resp.StatusCode, body)
	}
}

func TestReferrersPassThrough(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 1024)
	subject, _ := img.Digest()
	// An artifact (e.g. a signature) whose subject is the image.
	sig := up.PushRandomImage(t, "team/app", "", 1, 512)
	sigManifest, _ := sig.Manifest()
	sigManifest.Subject = &v1.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: subject, Size: mustSize(t, img)}
	sigManifest.MediaType = "application/vnd.oci.image.manifest.v1+json"
	sigManifest.Config.MediaType = "application/vnd.example.signature"
	raw, _ := json.Marshal(sigManifest)
	if err := up.PutRawManifest("team/app", "sig", "application/vnd.oci.image.manifest.v1+json", raw); err != nil {
		t.Fatal(err)
	}
	e := startProxy(t, up, domainBlock)
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	resp, body := e.do("GET", "docker.example.test", "/v2/team/app/referrers/"+subject.String(), http.Header{"Authorization": {"Bearer " + tok}})
	if resp.StatusCode != 200 || !strings.Contains(body, "application/vnd.example.signature") {
		t.Fatalf("referrers = %d %s", resp.StatusCode, body)
	}
	if up.Counters.ReferrersRequests() != 1 {
		t.Errorf("%d referrers requests upstream, want 1", up.Counters.ReferrersRequests())
	}
}

func mustSize(t *testing.T, img v1.Image) int64 {
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(raw))
}
