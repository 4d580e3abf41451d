package registry

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
	"github.com/caddy-dockerproxy/dockerproxy/netguard"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// publicUpstream is the policy of an upstream on the public internet,
// whatever address the test serves it on: its own host is allowed, any
// other internal address is not.
func publicUpstream(_ context.Context, up Upstream) netguard.Policy {
	return netguard.Policy{Home: netguard.HostPort(up.URL)}
}

// newPolicyProxy is the request path in front of upstreamURL, with the
// cache on, the given address policy (nil: the proxy's own, from the
// upstream's address) and a logger whose entries the test reads.
func newPolicyProxy(t *testing.T, upstreamURL string, policy func(context.Context, Upstream) netguard.Policy) (*httptest.Server, *observer.ObservedLogs) {
	t.Helper()
	router, err := NewRouter(RouterConfig{Default: upstreamURL})
	if err != nil {
		t.Fatal(err)
	}
	store, err := blobcache.Open(blobcache.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	sealer, err := tokenauth.NewSealer([]byte("a test key of more than sixteen bytes"))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	tokens := &tokenauth.Fetcher{Client: &http.Client{}}
	p := &Proxy{
		Router: router,
		Upstream: &Client{
			HTTP:   &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
			Tokens: tokens,
			Policy: policy,
		},
		Auth:   &tokenauth.Endpoint{Sealer: sealer, Fetcher: tokens, Logger: logger},
		Cache:  NewCache(store, time.Minute, nil),
		Logger: logger,
		Scheme: func(*http.Request) string { return "http" },
	}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return srv, logs
}

// registryError is the first entry of a registry JSON error body.
func registryError(t *testing.T, body []byte) (code, message string) {
	t.Helper()
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("not a registry error: %s", body)
	}
	return e.Errors[0].Code, e.Errors[0].Message
}

// TestRedirectToInternalAddressRefused: an upstream on the public internet
// that redirects a manifest by tag or a tag list to an internal address
// does not get the proxy to fetch it: the client gets 502 UNAVAILABLE
// without the address, the internal service gets nothing, the log says
// where. The same upstream's own content is served; and an upstream that
// is itself on an internal address (a private registry) may redirect
// there.
func TestRedirectToInternalAddressRefused(t *testing.T) {
	var internalHits atomic.Int64
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		internalHits.Add(1)
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		io.WriteString(w, `{"internal":"secret"}`)
	}))
	defer internal.Close()
	// A real registry, with a front that sends two requests elsewhere.
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/app/redirected/manifests/latest", "/v2/app/redirected/tags/list":
			http.Redirect(w, r, internal.URL+"/admin?token=abc", http.StatusTemporaryRedirect)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer upstream.Close()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	upHost := strings.TrimPrefix(upstream.URL, "http://")
	upRef, err := name.ParseReference(upHost+"/app/ok:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(upRef, img); err != nil {
		t.Fatal(err)
	}

	srv, logs := newPolicyProxy(t, upstream.URL, publicUpstream)
	for _, path := range []string{"/v2/app/redirected/manifests/latest", "/v2/app/redirected/tags/list"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: status %d, want 502: %s", path, resp.StatusCode, body)
			continue
		}
		code, msg := registryError(t, body)
		if code != CodeUnavailable || !strings.Contains(msg, "internal address") {
			t.Errorf("%s: error %s %q", path, code, msg)
		}
		internalAddr := strings.TrimPrefix(internal.URL, "http://")
		if strings.Contains(string(body), internalAddr) || strings.Contains(string(body), "secret") {
			t.Errorf("%s: the answer shows the internal service: %s", path, body)
		}
	}
	if n := internalHits.Load(); n != 0 {
		t.Errorf("the internal service got %d requests", n)
	}
	logged := false
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if f.Type == zapcore.ErrorType && strings.Contains(f.Interface.(error).Error(), strings.TrimPrefix(internal.URL, "http://")) {
				logged = true
				if strings.Contains(f.Interface.(error).Error(), "token=abc") {
					t.Errorf("the log has the redirect's query: %v", f.Interface)
				}
			}
		}
	}
	if !logged {
		t.Error("no log entry names the refused address")
	}
	proxyHost := strings.TrimPrefix(srv.URL, "http://")
	ref, err := name.ParseReference(proxyHost+"/app/ok:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("the upstream's own content: %v", err)
	}
	if err := testupstream.SameImage(got, img); err != nil {
		t.Errorf("the upstream's own content: %v", err)
	}

	// The proxy's own policy: this upstream is on loopback, so it is a
	// private registry, whose redirects may stay inside.
	srv, _ = newPolicyProxy(t, upstream.URL, nil)
	resp, err := http.Get(srv.URL + "/v2/app/redirected/manifests/latest")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || internalHits.Load() != 1 {
		t.Errorf("upstream on loopback: status %d, %d internal requests; want its redirect followed", resp.StatusCode, internalHits.Load())
	}
}

// TestRealmOnInternalAddressRefused: an upstream on the public internet
// whose 401 names a token realm on an internal address gets neither the
// proxy's token request nor a client's credentials: pulls and /v2/auth
// with credentials answer 502 UNAVAILABLE.
func TestRealmOnInternalAddressRefused(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.AddUser("alice", "alice-pw")
	up.PushRandomImage(t, "library/alpine", "latest", 1, 512)
	srv, _ := newPolicyProxy(t, up.URL, publicUpstream)

	resp, err := http.Get(srv.URL + "/v2/library/alpine/manifests/latest")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("manifest: status %d, want 502: %s", resp.StatusCode, body)
	}
	if code, _ := registryError(t, body); code != CodeUnavailable || strings.Contains(string(body), up.RealmAddr) {
		t.Errorf("manifest: %s", body)
	}

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/auth?service="+up.Service+"&scope=repository:library/alpine:pull", nil)
	req.SetBasicAuth("alice", "alice-pw")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("/v2/auth with credentials: status %d, want 502: %s", resp.StatusCode, body)
	} else if code, _ := registryError(t, body); code != CodeUnavailable || strings.Contains(string(body), up.RealmAddr) {
		t.Errorf("/v2/auth with credentials: %s", body)
	}
	if n := up.Counters.TokenRequests(); n != 0 {
		t.Errorf("the internal realm got %d token requests", n)
	}
}

// resolver answers from a table.
type resolver map[string][]netip.Addr

func (r resolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func TestUpstreamPolicy(t *testing.T) {
	r := resolver{
		"registry.lan":       {netip.MustParseAddr("10.0.0.5")},
		"mixed.example":      {netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("fd00::5")},
		"registry.example":   {netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("2606:2800::1")},
		"localhost":          {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
		"mapped.example.com": {netip.MustParseAddr("::ffff:192.168.0.1")},
	}
	for _, c := range []struct {
		url      string
		home     string
		internal bool
		err      bool
	}{
		{"https://registry-1.docker.io", "registry-1.docker.io:443", false, true}, // not in the table: public
		{"https://registry.example", "registry.example:443", false, false},
		{"https://registry.lan:5000", "registry.lan:5000", true, false},
		{"https://mixed.example", "mixed.example:443", true, false},
		{"http://localhost:5000", "localhost:5000", true, false},
		{"http://mapped.example.com", "mapped.example.com:80", true, false},
		{"http://127.0.0.1:5000", "127.0.0.1:5000", true, false},
		{"https://[fd00::1]", "[fd00::1]:443", true, false},
		{"https://100.64.1.1", "100.64.1.1:443", true, false},
		{"https://8.8.8.8", "8.8.8.8:443", false, false},
	} {
		u, err := url.Parse(c.url)
		if err != nil {
			t.Fatal(err)
		}
		p, err := UpstreamPolicy(context.Background(), Upstream{Name: u.Host, URL: u}, r)
		if p.Home != c.home || p.AllowInternal != c.internal || (err != nil) != c.err {
			t.Errorf("%s: %+v, %v; want home %s, internal %v, error %v", c.url, p, err, c.home, c.internal, c.err)
		}
	}
}

// TestRefusedRedirectIsARegistryError: the refusal reaches writeUpstreamError
// through the redirect's wrapping and becomes 502 UNAVAILABLE.
func TestRefusedRedirectIsARegistryError(t *testing.T) {
	p := &Proxy{Logger: zap.NewNop()}
	refused := withoutQuery(&url.URL{Scheme: "http", Host: "10.0.0.1", Path: "/p", RawQuery: "sig=1"},
		&url.Error{Op: "Get", URL: "http://10.0.0.1/p?sig=1", Err: &netguard.RefusedError{Host: "10.0.0.1", Addr: netip.MustParseAddr("10.0.0.1")}})
	if !errors.As(refused, new(*netguard.RefusedError)) {
		t.Fatal("the refusal is lost in the wrapping")
	}
	rec := httptest.NewRecorder()
	p.writeUpstreamError(rec, target{up: Upstream{Name: "registry.example"}}, refused)
	code, msg := registryError(t, rec.Body.Bytes())
	if rec.Code != http.StatusBadGateway || code != CodeUnavailable || strings.Contains(msg, "10.0.0.1") {
		t.Errorf("%d %s %q", rec.Code, code, msg)
	}
}
