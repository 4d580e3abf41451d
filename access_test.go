package dockerproxy_test

// Access: the cache never widens what an identity may read, whatever the
// route, the upstream's behaviour or the site that filled the cache.

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// redirectEverything is an upstream that behaves as registry.k8s.io does
// for clients outside its clouds: every /v2/ request gets a 307 to its
// backing registry, without looking whether that holds anything.
func redirectEverything(t *testing.T, backing string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, backing+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// contentPaths are the by-digest paths of an image's manifest and layers
// under repo.
func contentPaths(t *testing.T, repo string, img v1.Image) []string {
	t.Helper()
	md, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{"/v2/" + repo + "/manifests/" + md.String()}, blobPaths(repo, layerDigests(t, img))...)
}

// TestRedirectingUpstreamUnlocksNothing: content a client's own login, or
// the configured credentials, fetched from one upstream is not served to
// anonymous clients of an upstream that redirects everything (its backing
// registry does not have it), whatever routing form names that upstream,
// and not while the content is still being filled either.
func TestRedirectingUpstreamUnlocksNothing(t *testing.T) {
	for _, fetchedWith := range []string{"the client's login", "configured credentials"} {
		t.Run(fetchedWith, func(t *testing.T) {
			ghcr := testupstream.Start(t, testupstream.Options{Service: "ghcr.test"})
			ghcr.SetPrivate("secret/app", "alice", "alice-pw")
			img := ghcr.PushRandomImage(t, "secret/app", "v1", 2, 16<<10)
			held := ghcr.PushRandomImage(t, "secret/app", "v2", 1, 64<<10)
			backing := testupstream.Start(t, testupstream.Options{Service: "backing.test"})
			k8s := redirectEverything(t, backing.URL)
			credentials := ""
			if fetchedWith == "configured credentials" {
				credentials = "credentials ghcr.io alice alice-pw"
			}
			e := startProxy(t, nil, strings.NewReplacer("GHCR", ghcr.URL, "K8S", k8s, "CREDENTIALS", credentials).Replace(`http://:{PORT} {
	docker_proxy {
		domain example.test
		upstream ghcr.io GHCR
		upstream registry.k8s.io K8S
		CREDENTIALS
		cache {DIR}/cache {
			tag_ttl 5m
		}
	}
}`))
			var client authn.Authenticator
			if credentials == "" {
				client = &authn.Basic{Username: "alice", Password: "alice-pw"}
			}
			if err := e.pullImage(e.ref("ghcr.example.test", "secret/app:v1"), client, img); err != nil {
				t.Fatalf("pull of the private image: %v", err)
			}

			// A fill in progress: the held image's layer, stopped
			// after its first bytes.
			hold := ghcr.Faults.HoldBlobs(1024)
			heldLayer := layerDigests(t, held)[0]
			header := http.Header{}
			if client != nil {
				header.Set("Authorization", "Bearer "+loginTokenOn(t, e, "ghcr.example.test", "alice", "alice-pw", "secret/app"))
			}
			filling := make(chan struct{})
			go func() {
				defer close(filling)
				req, _ := http.NewRequest("GET", e.url("ghcr.example.test", "/v2/secret/app/blobs/"+heldLayer.String()), nil)
				req.Header = header
				if resp, err := (&http.Client{Transport: e.transport}).Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}()
			<-hold.Reached()
			defer func() { hold.Release(); <-filling }()

			var paths []string
			for _, p := range append(contentPaths(t, "anything", img), "/v2/anything/blobs/"+heldLayer.String()) {
				rest := strings.TrimPrefix(p, "/v2/")
				paths = append(paths,
					"k8s.example.test "+p,
					"ghcr.example.test "+p+"?ns=registry.k8s.io",
					"ghcr.example.test /v2/registry.k8s.io/"+rest)
			}
			for _, hp := range paths {
				host, path, _ := strings.Cut(hp, " ")
				resp, body := e.do("GET", host, path, nil)
				if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent {
					t.Errorf("anonymous GET %s on %s = %d with %d bytes: cached private content served", path, host, resp.StatusCode, len(body))
					continue
				}
				if resp.StatusCode != http.StatusNotFound {
					t.Errorf("anonymous GET %s on %s = %d, want 404 (the backing registry has none of it)", path, host, resp.StatusCode)
				}
			}
		})
	}
}

// TestConfiguredCredentialsServeOnlyTheirSite: three sites share the cache
// (its default directory); one has credentials for the upstream, one none,
// one the same user with another secret. What the first fetched with its
// credentials is not served to the others' anonymous clients, by tag or by
// digest, though the cache holds every byte: their own identities are
// refused upstream.
func TestConfiguredCredentialsServeOnlyTheirSite(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "bot", "bot-pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 16<<10)
	e := startProxy(t, up, `http://docker.example.test:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		credentials docker.io bot bot-pw
	}
}
http://hub.example.test:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
	}
}
http://quay.example.test:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		credentials docker.io bot not-bot-pw
	}
}`)
	if err := e.pullImage(e.ref("docker.example.test", "team/secret:v1"), nil, img); err != nil {
		t.Fatalf("anonymous pull on the site with credentials: %v", err)
	}
	fetched := up.Counters.ObjectStoreGETs()
	if err := e.pullImage(e.ref("hub.example.test", "team/secret:v1"), nil, img); !isStatus(err, http.StatusUnauthorized) {
		t.Errorf("anonymous pull by tag on the site without credentials: %v, want 401", err)
	}
	for _, p := range append(contentPaths(t, "team/secret", img), "/v2/team/secret/manifests/v1") {
		resp, body := e.do("GET", "hub.example.test", p, nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("anonymous GET %s on the site without credentials = %d with %d bytes, want 401", p, resp.StatusCode, len(body))
		}
		// The upstream refuses the other secret's token: nothing can
		// confirm that site's access.
		resp, body = e.do("GET", "quay.example.test", p, nil)
		if resp.StatusCode == http.StatusOK || strings.Contains(body, "team/secret") && resp.StatusCode < 300 {
			t.Errorf("anonymous GET %s on the site with the same user and another secret = %d with %d bytes: served", p, resp.StatusCode, len(body))
		}
	}
	// The site with credentials still serves it, from the cache.
	if err := e.pullImage(e.ref("docker.example.test", "team/secret:v1"), nil, img); err != nil {
		t.Errorf("second pull on the site with credentials: %v", err)
	}
	if n := up.Counters.ObjectStoreGETs() - fetched; n != 0 {
		t.Errorf("the second pull fetched %d blobs upstream, want 0", n)
	}
}

// TestRefusalsDoNotTellWhatIsCached: an anonymous request for a private
// image's content gets the same answer whether the cache holds it (a
// logged-in client pulled it) or not, so nobody learns which private
// versions were pulled.
func TestRefusalsDoNotTellWhatIsCached(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "alice-pw")
	pulled := up.PushRandomImage(t, "team/secret", "v1", 1, 4<<10)
	never := up.PushRandomImage(t, "team/secret", "v2", 1, 4<<10)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	if err := e.pullImage(e.ref("docker.example.test", "team/secret:v1"), &authn.Basic{Username: "alice", Password: "alice-pw"}, pulled); err != nil {
		t.Fatal(err)
	}
	// An anonymous token for the repository, as a client would have.
	tok := anonymousToken(t, e, "docker.example.test", "team/secret")
	cached, uncached := contentPaths(t, "team/secret", pulled), contentPaths(t, "team/secret", never)
	for _, method := range []string{"GET", "HEAD"} {
		for i := range cached {
			a, abody := e.get(method, cached[i], tok, nil)
			b, bbody := e.get(method, uncached[i], tok, nil)
			if a.StatusCode != http.StatusUnauthorized || b.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s cached %s = %d, uncached = %d; want 401 for both", method, cached[i], a.StatusCode, b.StatusCode)
			}
			for _, h := range []string{"Cache-Status", "Www-Authenticate", "Content-Type", "Content-Length", "Docker-Content-Digest"} {
				if a.Header.Get(h) != b.Header.Get(h) {
					t.Errorf("%s %s: %s %q when cached, %q when not", method, cached[i], h, a.Header.Get(h), b.Header.Get(h))
				}
			}
			if abody != bbody {
				t.Errorf("%s %s: body %q when cached, %q when not", method, cached[i], abody, bbody)
			}
		}
	}
	// By tag too: v1's record is cached, v2's is not.
	a, abody := e.get("GET", "/v2/team/secret/manifests/v1", tok, nil)
	b, bbody := e.get("GET", "/v2/team/secret/manifests/v2", tok, nil)
	if a.StatusCode != b.StatusCode || a.Header.Get("Cache-Status") != b.Header.Get("Cache-Status") || abody != bbody {
		t.Errorf("by tag: cached %d %q %q, uncached %d %q %q", a.StatusCode, a.Header.Get("Cache-Status"), abody, b.StatusCode, b.Header.Get("Cache-Status"), bbody)
	}
}

// TestErrorsKeepInternalDetailsInTheLog: what clients read names
// registries, never an upstream's internal address or the dial error;
// the log has the details.
func TestErrorsKeepInternalDetailsInTheLog(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "alice-pw")
	up.AddUser("bob", "bob-pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 1, 4<<10)
	e := startProxy(t, up, `http://:{PORT} {
	docker_proxy {
		domain example.test
		upstream docker.io {UPSTREAM}
		route quay.example.test http://registry.internal.example:5000
		route mirror.example.test docker.io
		cache {DIR}/cache
	}
}`)
	if err := e.pullImage(e.ref("docker.example.test", "team/secret:v1"), &authn.Basic{Username: "alice", Password: "alice-pw"}, img); err != nil {
		t.Fatal(err)
	}
	bob := loginToken(t, e, "bob", "bob-pw", "team/secret")
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = up.Faults.SetDown(false) }()
	upstreamHost := strings.TrimPrefix(up.URL, "http://")
	for _, p := range contentPaths(t, "team/secret", img) {
		resp, body := e.get("GET", p, bob, nil)
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "UNAVAILABLE") {
			t.Errorf("GET %s while the upstream is down, for a client it never confirmed: %d %s, want 503 UNAVAILABLE", p, resp.StatusCode, body)
		}
		for _, secret := range []string{upstreamHost, "127.0.0.1", "dial", "refused"} {
			if strings.Contains(body, secret) {
				t.Errorf("GET %s: the client reads %q: %s", p, secret, body)
			}
		}
	}
	if !e.logContains("cannot confirm access") {
		t.Error("the access check's failure is not in the log")
	}
	resp, body := e.do("GET", "mirror.example.test", "/v2/team/app/manifests/1?ns=unknown.example", nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "NAME_UNKNOWN") || strings.Contains(body, "registry.internal.example") {
		t.Errorf("ns= of an unknown registry: %d %s, want 404 NAME_UNKNOWN without the upstreams' addresses", resp.StatusCode, body)
	}
}

// TestAccessCheckThroughAURLSignedForGET: the registry answers blob HEADs
// with a redirect to an object store whose URLs are signed for GET only
// (HEAD is refused, as S3 refuses a presigned GET URL). A client the
// upstream newly admits is confirmed by the first byte of each layer and
// then served from the cache; a client it refuses is not.
func TestAccessCheckThroughAURLSignedForGET(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{RedirectBlobHEADs: true, SignedForGETOnly: true})
	up.SetPrivate("team/secret", "alice", "alice-pw")
	up.AddUser("mallory", "mallory-pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 64<<10)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	ref := e.ref("docker.example.test", "team/secret:v1")
	if err := e.pullImage(ref, &authn.Basic{Username: "alice", Password: "alice-pw"}, img); err != nil {
		t.Fatal(err)
	}
	up.SetPrivate("team/secret", "bob", "bob-pw")
	before := up.Counters.BlobBytes()
	if err := e.pullImage(ref, &authn.Basic{Username: "bob", Password: "bob-pw"}, img); err != nil {
		t.Fatalf("newly admitted client: %v", err)
	}
	blobs := int64(len(layerDigests(t, img))) + 1 // and the config
	if n := up.Counters.BlobBytes() - before; n != blobs {
		t.Errorf("the newly admitted client's pull took %d bytes from the object store, want %d (a byte per blob to confirm access)", n, blobs)
	}
	if err := e.pullImage(ref, &authn.Basic{Username: "mallory", Password: "mallory-pw"}, img); err == nil {
		t.Error("a client the upstream refuses got the cached image")
	}
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
