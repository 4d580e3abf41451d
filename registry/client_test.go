package registry

import (
	"context"
	"errors"
	"net/http"
	"net/url"
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
