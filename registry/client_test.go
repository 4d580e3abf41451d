package registry

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// TestChallengeFollowsARedirectedBase: an upstream that sends GET /v2/ to
// another registry host is as open as that host is to an anonymous token
// of its own realm. That realm is never taken for the upstream's, and
// nothing but its own token reaches that host.
func TestChallengeFollowsARedirectedBase(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	mirror := up.StartMirror(t, testupstream.MirrorOptions{Tokens: true, Base: true})
	u, err := url.Parse(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	upstream := Upstream{Name: u.Host, URL: u}
	newClient := func() *Client {
		return &Client{
			HTTP:   &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
			Tokens: &tokenauth.Fetcher{Client: &http.Client{}},
		}
	}

	ch, err := newClient().Challenge(context.Background(), upstream)
	if err != nil || ch != nil {
		t.Fatalf("Challenge = %v, %v; want an open upstream", ch, err)
	}
	if mirror.TokenRequests() == 0 || len(mirror.Authorizations()) == 0 {
		t.Errorf("the mirror's own realm was not used: %d token requests", mirror.TokenRequests())
	}
	if foreign := mirror.ForeignAuthorizations(); len(foreign) != 0 {
		t.Errorf("the mirror received %d Authorization headers it did not issue", len(foreign))
	}

	mirror.SetStatus(http.StatusServiceUnavailable)
	ch, err = newClient().Challenge(context.Background(), upstream)
	var se *upstreamStatusError
	if ch != nil || !errors.As(err, &se) || se.status != http.StatusServiceUnavailable {
		t.Errorf("Challenge with the redirect target down = %v, %v; want upstream status 503", ch, err)
	}
}

// TestRedirectWithinTheUpstreamKeepsAuthorization: a redirect to another
// path of the upstream's own host keeps the request's Authorization (the
// upstream asked for it there); a redirect to another host gets none.
func TestRedirectWithinTheUpstreamKeepsAuthorization(t *testing.T) {
	var elsewhereAuth atomic.Value
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhereAuth.Store(r.Header.Get("Authorization"))
		w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("a", 64))
		w.WriteHeader(http.StatusOK)
	}))
	defer elsewhere.Close()
	const token = "Bearer upstream-token"
	upstreamSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/old/name/manifests/1":
			http.Redirect(w, r, "/v2/new/name/manifests/1", http.StatusMovedPermanently)
		case "/v2/new/name/manifests/1":
			if r.Header.Get("Authorization") != token {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, elsewhere.URL+"/manifest", http.StatusTemporaryRedirect)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer upstreamSrv.Close()
	u, _ := url.Parse(upstreamSrv.URL)
	c := &Client{
		HTTP:   &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		Tokens: &tokenauth.Fetcher{Client: &http.Client{}},
	}
	o := outbound{method: http.MethodGet, path: "/v2/old/name/manifests/1", header: http.Header{}, scope: "repository:old/name:pull", kind: KindManifest}
	resp, err := c.Do(context.Background(), Upstream{Name: u.Host, URL: u}, tokenauth.Grant{Authorization: token}, o)
	if err != nil {
		t.Fatal(err)
	}
	drain(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: the redirect within the upstream lost its Authorization", resp.StatusCode)
	}
	if got, _ := elsewhereAuth.Load().(string); got != "" {
		t.Errorf("the other host received Authorization %q", got)
	}
}
