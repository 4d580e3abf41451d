package registry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// routeHost sends requests for host to upstream, beside p's default route.
func routeHost(t *testing.T, p *Proxy, defaultURL, host, upstream string) {
	t.Helper()
	router, err := NewRouter(RouterConfig{Default: defaultURL, Routes: map[string]string{host: upstream}})
	if err != nil {
		t.Fatal(err)
	}
	p.Router = router
}

// getAs does an anonymous request to srv with Host host.
func getAs(t *testing.T, srv *httptest.Server, method, host, path string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// TestAccessNeedsTheRegistrysFinalAnswer drives the request path without
// Caddy. A client's login pulled a private image through the default
// route; the cache holds all of it. Then:
//   - an upstream that redirects every request to a registry that has
//     none of it (as registry.k8s.io redirects without looking) unlocks
//     nothing: its 307 is not an answer, the target's 404 is;
//   - an upstream whose tag HEAD names the private manifest's digest
//     unlocks nothing either: a tag's answer names a digest, it does not
//     confirm access to what the cache holds under it;
//   - an upstream that answers every HEAD (and every first-byte GET) with
//     success unlocks nothing: its answer is about no content in
//     particular (neither the digest nor the size is the entry's).
func TestAccessNeedsTheRegistrysFinalAnswer(t *testing.T) {
	ghcr := testupstream.Start(t, testupstream.Options{})
	ghcr.SetPrivate("secret/app", "alice", "alice-pw")
	img := ghcr.PushRandomImage(t, "secret/app", "v1", 1, 8<<10)
	md, _ := img.Digest()
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()

	backing := testupstream.Start(t, testupstream.Options{})
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, backing.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	// A tag HEAD that names the private manifest; nothing else is there.
	tagNamer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && r.URL.Path == "/v2/anything/manifests/v1" {
			w.Header().Set("Docker-Content-Digest", md.String())
			w.Header().Set("Content-Type", string(mt))
			w.Header().Set("Content-Length", strconv.Itoa(len(raw)))
			return
		}
		WriteError(w, &Error{Status: http.StatusNotFound, Code: CodeManifestUnknown, Message: "not here"})
	}))
	t.Cleanup(tagNamer.Close)
	everything := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			w.Header().Set("Content-Range", "bytes 0-0/5")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = io.WriteString(w, "x")
			return
		}
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", "5")
			return
		}
		WriteError(w, &Error{Status: http.StatusNotFound, Code: CodeManifestUnknown, Message: "not here"})
	}))
	t.Cleanup(everything.Close)

	for _, c := range []struct {
		name, upstream string
		refusal        int // the status of a refusal, or 0 for any error
	}{
		{"an upstream that redirects everything", redirector.URL, http.StatusNotFound},
		{"an upstream whose tag names the digest", tagNamer.URL, http.StatusNotFound},
		{"an upstream that answers every HEAD", everything.URL, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, srv := newTestProxy(t, ghcr, time.Hour)
			routeHost(t, p, ghcr.URL, "other.test", c.upstream)
			in := &instance{t: t, p: p, host: strings.TrimPrefix(srv.URL, "http://"), saw: map[string]string{}}
			if err := in.pullImage("secret/app:v1", &authn.Basic{Username: "alice", Password: "alice-pw"}, img); err != nil {
				t.Fatal(err)
			}
			// A HEAD of the tag may say what the upstream said; then
			// nothing cached may follow from it.
			getAs(t, srv, http.MethodHead, "other.test", "/v2/anything/manifests/v1")
			for _, path := range []string{
				"/v2/anything/manifests/v1",
				"/v2/anything/manifests/" + md.String(),
				"/v2/anything/blobs/" + ld.String(),
			} {
				resp, body := getAs(t, srv, http.MethodGet, "other.test", path)
				switch {
				case resp.StatusCode < 300 || strings.Contains(string(body), string(raw)):
					t.Errorf("anonymous GET %s through %s = %d with %d bytes: cached private content served", path, c.name, resp.StatusCode, len(body))
				case c.refusal != 0 && resp.StatusCode != c.refusal:
					t.Errorf("anonymous GET %s through %s = %d, want %d", path, c.name, resp.StatusCode, c.refusal)
				}
			}
		})
	}
}
