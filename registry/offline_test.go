package registry

import (
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// newTestProxy assembles the request path without Caddy, with the cache on.
func newTestProxy(t testing.TB, up *testupstream.Upstream, tagTTL time.Duration) (*Proxy, *httptest.Server) {
	t.Helper()
	return newTestProxyWith(t, up, tagTTL, blobcache.Options{}, zap.NewNop())
}

// newTestProxyWith is newTestProxy with store options (a fresh Dir unless
// given) and a logger.
func newTestProxyWith(t testing.TB, up *testupstream.Upstream, tagTTL time.Duration, opts blobcache.Options, logger *zap.Logger) (*Proxy, *httptest.Server) {
	t.Helper()
	router, err := NewRouter(RouterConfig{Default: up.URL})
	if err != nil {
		t.Fatal(err)
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	opts.NoSync = true
	opts.Logger = logger
	store, err := blobcache.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	sealer, err := tokenauth.NewSealer([]byte("a test key of more than sixteen bytes"))
	if err != nil {
		t.Fatal(err)
	}
	tokens := &tokenauth.Fetcher{Client: &http.Client{}}
	p := &Proxy{
		Router: router,
		Upstream: &Client{
			HTTP:   &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
			Tokens: tokens,
		},
		Auth:   &tokenauth.Endpoint{Sealer: sealer, Fetcher: tokens},
		Cache:  NewCache(store, tagTTL, nil),
		Logger: logger,
		Scheme: func(*http.Request) string { return "http" },
	}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return p, srv
}

// TestOfflineAccessOnlyForConfirmedCredentials: with the upstream down and
// every fresh verdict expired, a client gets private content from the cache
// only with the credentials the upstream accepted before.
func TestOfflineAccessOnlyForConfirmedCredentials(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "alice-pw")
	up.AddUser("mallory", "mallory-pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 8<<10)
	p, srv := newTestProxy(t, up, time.Nanosecond)
	p.Cache.confirmationTTL = 0 // every check asks the upstream, or falls back
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, err := name.ParseReference(path.Join(host, "team/secret:v1"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	pull := func(auth authn.Authenticator) error {
		got, err := remote.Image(ref, remote.WithAuth(auth), remote.WithRetryBackoff(remote.Backoff{Duration: time.Millisecond, Steps: 1}))
		if err != nil {
			return err
		}
		gd, _ := got.Digest()
		wd, _ := img.Digest()
		if gd != wd {
			t.Errorf("digest %s, want %s", gd, wd)
		}
		layers, err := got.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			rc.Close()
		}
		return nil
	}
	alice := &authn.Basic{Username: "alice", Password: "alice-pw"}
	if err := pull(alice); err != nil {
		t.Fatalf("online: %v", err)
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer up.Faults.Reset()
	if err := pull(alice); err != nil {
		t.Errorf("alice offline: %v", err)
	}
	for _, who := range []authn.Authenticator{authn.Anonymous, &authn.Basic{Username: "alice", Password: "guess"}, &authn.Basic{Username: "mallory", Password: "mallory-pw"}} {
		if err := pull(who); err == nil {
			t.Errorf("%v pulled the private image offline", who)
		}
	}
}
