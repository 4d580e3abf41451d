package dockerproxy_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// redirectBlocks proxy the test upstream as Docker Hub with the cache on,
// and with `cache off`, where every request passes through.
var redirectBlocks = []struct{ name, block string }{
	{"cache on", cachedBlock("tag_ttl 5m")},
	{"cache off", `http://:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		cache off
	}
}`},
}

// TestPullsFollowRedirectsToAnotherRegistry: the upstream answers every
// manifest, tags/list and referrers request with a 307 to a second
// registry host, as registry.k8s.io does to Artifact Registry. Clients
// pull through the proxy as if the upstream had answered itself, and
// nothing of the proxy's or the client's credentials reaches that host.
func TestPullsFollowRedirectsToAnotherRegistry(t *testing.T) {
	for _, tokens := range []bool{false, true} {
		for _, b := range redirectBlocks {
			name := b.name + ", open mirror"
			if tokens {
				name = b.name + ", mirror with its own realm"
			}
			t.Run(name, func(t *testing.T) {
				up := testupstream.Start(t, testupstream.Options{})
				up.AddUser("alice", "alice-pw")
				img := up.PushRandomImage(t, "team/app", "1", 2, 32<<10)
				up.PushImage(t, "team/app", "2", img)
				idx := up.PushRandomIndex(t, "team/multi", "v1")
				mirror := up.StartMirror(t, testupstream.MirrorOptions{Tokens: tokens})
				e := startProxy(t, up, b.block)

				ref := e.ref("docker.example.test", "team/app:1")
				if err := e.pullImage(ref, nil, img); err != nil {
					t.Fatalf("anonymous pull: %v", err)
				}
				if err := e.pullImage(ref, &authn.Basic{Username: "alice", Password: "alice-pw"}, img); err != nil {
					t.Fatalf("logged-in pull: %v", err)
				}
				pullIndex(t, e, e.ref("docker.example.test", "team/multi:v1"), idx)
				desc, err := remote.Head(e.ref("docker.example.test", "team/app:2"), e.remoteOptions(nil)...)
				wd, _ := img.Digest()
				if err != nil || desc.Digest != wd {
					t.Errorf("HEAD of a tag: %v, %v, want digest %s", desc, err, wd)
				}
				tags, err := remote.List(ref.Context(), e.remoteOptions(nil)...)
				if err != nil || strings.Join(tags, ",") != "1,2" {
					t.Errorf("tags: %q, %v", tags, err)
				}

				// Pagination links name the proxy's path for the list, not
				// the path the mirror keeps it under.
				tok := anonymousToken(t, e, "docker.example.test", "team/app")
				resp, body := e.get("GET", "/v2/team/app/tags/list?n=1", tok, nil)
				link := resp.Header.Get("Link")
				if resp.StatusCode != 200 || !strings.Contains(body, `["1"]`) || link != `</v2/team/app/tags/list?last=1&n=1>; rel="next"` {
					t.Fatalf("tags page 1: %d %s Link %q", resp.StatusCode, body, link)
				}
				resp, body = e.get("GET", link[1:strings.IndexByte(link, '>')], tok, nil)
				if resp.StatusCode != 200 || !strings.Contains(body, `["2"]`) {
					t.Errorf("tags page 2: %d %s", resp.StatusCode, body)
				}
				resp, body = e.get("GET", "/v2/team/app/referrers/"+wd.String(), tok, nil)
				if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), "image.index") || !strings.Contains(body, `"manifests"`) {
					t.Errorf("referrers: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
				}

				// The object store names no digest; the registry's 307 did.
				layer := layerDigests(t, img)[0]
				resp, _ = e.get("GET", "/v2/team/app/blobs/"+layer.String(), tok, nil)
				if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != layer.String() {
					t.Errorf("blob: %d Docker-Content-Digest %q", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
				}

				if mirror.Requests() == 0 {
					t.Fatal("nothing went through the mirror")
				}
				if tokens && len(mirror.Authorizations()) == 0 {
					t.Error("the mirror's own tokens were never used")
				}
				if foreign := mirror.ForeignAuthorizations(); len(foreign) != 0 {
					t.Errorf("the mirror received %d Authorization headers it did not issue", len(foreign))
				}
			})
		}
	}
}

// TestRedirectTargetErrorsAreRegistryErrors: when the host an upstream
// redirected to fails (an object store's XML, a web front end's HTML), the
// client gets a registry error it can read, with a status that says whose
// fault it is.
func TestRedirectTargetErrorsAreRegistryErrors(t *testing.T) {
	for _, b := range redirectBlocks {
		t.Run(b.name, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{})
			img := up.PushRandomImage(t, "team/app", "1", 1, 4<<10)
			e := startProxy(t, up, b.block)
			tok := anonymousToken(t, e, "docker.example.test", "team/app")
			layer := layerDigests(t, img)[0]
			blobPath := "/v2/team/app/blobs/" + layer.String()

			for _, c := range []struct {
				storeStatus, status int
				code                string
			}{
				{404, 404, "BLOB_UNKNOWN"},
				{403, 502, "UNAVAILABLE"},
				{500, 502, "UNAVAILABLE"},
				{503, 503, "UNAVAILABLE"},
			} {
				up.Faults.SetObjectStoreStatus(c.storeStatus)
				resp, body := e.get("GET", blobPath, tok, nil)
				wantRegistryError(t, "blob, object store "+http.StatusText(c.storeStatus), resp, body, c.status, c.code)
			}
			up.Faults.SetObjectStoreStatus(0)
			if sum, _, _, err := e.readBlob(blobPath, tok, nil); err != nil || sum != layer.String() {
				t.Errorf("the blob after the object store recovered: %s, %v", sum, err)
			}

			mirror := up.StartMirror(t, testupstream.MirrorOptions{Tokens: true})
			// The 404 last: once the tag is known to be missing, the
			// cache serves that answer while the upstream fails.
			for _, c := range []struct {
				mirrorStatus, status int
				manifestCode         string
				tagsCode             string
			}{
				{403, 502, "UNAVAILABLE", "UNAVAILABLE"},
				{500, 502, "UNAVAILABLE", "UNAVAILABLE"},
				{404, 404, "MANIFEST_UNKNOWN", "NAME_UNKNOWN"},
			} {
				mirror.SetStatus(c.mirrorStatus)
				what := "mirror " + http.StatusText(c.mirrorStatus)
				resp, body := e.get("GET", "/v2/team/app/manifests/1", tok, nil)
				wantRegistryError(t, "manifest, "+what, resp, body, c.status, c.manifestCode)
				resp, body = e.get("GET", "/v2/team/app/tags/list", tok, nil)
				wantRegistryError(t, "tags/list, "+what, resp, body, c.status, c.tagsCode)
			}
			mirror.SetStatus(0)
			if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
				t.Errorf("pull after the mirror recovered: %v", err)
			}
		})
	}
}

func wantRegistryError(t *testing.T, what string, resp *http.Response, body string, status int, code string) {
	t.Helper()
	var got struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil || len(got.Errors) != 1 ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("%s: not a registry error: %d %s %.200s", what, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		return
	}
	if resp.StatusCode != status || got.Errors[0].Code != code {
		t.Errorf("%s: %d %s, want %d %s (%s)", what, resp.StatusCode, got.Errors[0].Code, status, code, got.Errors[0].Message)
	}
}

// TestFailedRedirectsKeepTheirQueryOutOfLogs: a redirect target that is
// down, hangs up, cannot be parsed, leads back where it came from or on
// and on gives the client a clear 502, and the signature in its query
// reaches no log.
func TestFailedRedirectsKeepTheirQueryOutOfLogs(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 4<<10)
	e := startProxy(t, up, redirectBlocks[0].block)
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	blobPath := "/v2/team/app/blobs/" + layerDigests(t, img)[0].String()

	hangsUp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hangsUp.Close() })
	go func() {
		for {
			c, err := hangsUp.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// Each hop a new place, never the end.
	endless := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/hop/"))
		http.Redirect(w, r, fmt.Sprintf("/hop/%d?sig=SECRET-endless", n+1), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(endless.Close)
	for _, c := range []struct{ name, location, reason string }{
		{"down", "http://127.0.0.1:" + freePort(t) + "/blobs/b?sig=SECRET-down", "cannot be reached"},
		{"hangs up", "http://" + hangsUp.Addr().String() + "/blobs/b?sig=SECRET-hangs-up", "unavailable"},
		{"unparsable", "http://127.0.0.1:1/%zz?sig=SECRET-unparsable", "redirected without a usable Location"},
		{"loop", up.URL + blobPath, "redirected in a loop"},
		{"endless", endless.URL + "/hop/0?sig=SECRET-endless", "redirected more than 5 times"},
	} {
		up.Faults.RedirectBlobsTo(c.location)
		resp, body := e.get("GET", blobPath, tok, nil)
		wantRegistryError(t, c.name, resp, body, http.StatusBadGateway, "UNAVAILABLE")
		if !strings.Contains(body, c.reason) {
			t.Errorf("%s: the error does not say %q: %s", c.name, c.reason, body)
		}
	}
	if !e.logContains("upstream request failed") || !e.logContains("following upstream redirect to http://127.0.0.1") {
		t.Fatal("the failures were not logged, so the next check proves nothing")
	}
	if e.logContains("SECRET") {
		log, _ := os.ReadFile(e.logPath)
		t.Errorf("a redirect URL's query is in the log:\n%s", grepLines(string(log), "SECRET"))
	}
}
