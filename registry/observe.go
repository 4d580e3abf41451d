package registry

// Observing: what the request path does upstream, told to whoever counts
// it (the handler's metrics) without the request path knowing metrics.
// An upstream request carries in its context the call it belongs to (the
// upstream's name, the kind of request, the identity it goes out as); a
// transport wrapper reports each HTTP request sent with that context and
// its answer. Requests that never go out (refused before they were sent)
// are not reported.

import (
	"context"
	"net/http"
	"time"

	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// UpstreamCall is what an upstream request is for, as metrics label it:
// bounded values only, never a repository or a secret.
type UpstreamCall struct {
	// Upstream is the upstream's name (docker.io, ghcr.io, host:port).
	Upstream string
	// Kind is what the request asks for; KindAuth for a token request to
	// the upstream's realm.
	Kind Kind
	// Identity is who the request goes out as: IdentityAnonymous, the
	// configured account's username, or IdentityClient.
	Identity string
}

// The identities of an UpstreamCall that are not a configured username.
const (
	// IdentityAnonymous: the proxy's own requests, without credentials.
	IdentityAnonymous = "anonymous"
	// IdentityClient: a client's own credentials (docker login through
	// the proxy), whoever the client is.
	IdentityClient = "client"
)

// UpstreamObserver hears of every HTTP request sent on behalf of an
// upstream call: to the upstream, to where it redirected, or to its token
// realm. resp is nil when err is not; the observer may replace resp.Body
// (to count its bytes) but must not read it.
type UpstreamObserver interface {
	Sent(call UpstreamCall, resp *http.Response, err error)
}

// ObserveTransport wraps an upstream transport so that obs hears of each
// request made with a context that carries an UpstreamCall. tokens marks
// the transport of the token fetcher: its requests are counted as KindAuth
// whatever call they serve.
func ObserveTransport(rt http.RoundTripper, obs UpstreamObserver, tokens bool) http.RoundTripper {
	return &observedTransport{base: rt, obs: obs, tokens: tokens}
}

type observedTransport struct {
	base   http.RoundTripper
	obs    UpstreamObserver
	tokens bool
}

func (t *observedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if call, ok := req.Context().Value(upstreamCallKey{}).(*UpstreamCall); ok {
		c := *call
		if t.tokens {
			c.Kind = KindAuth
		}
		t.obs.Sent(c, resp, err)
	}
	return resp, err
}

type upstreamCallKey struct{}

// observing returns ctx carrying the call of a request to up of kind, as
// grant's identity, for ObserveTransport.
func (c *Client) observing(ctx context.Context, up Upstream, grant tokenauth.Grant, kind Kind) context.Context {
	call := &UpstreamCall{Upstream: up.Name, Kind: kind, Identity: IdentityAnonymous}
	switch {
	case !grant.Anonymous():
		call.Identity = IdentityClient
	case c.Credentials[up.Name] != nil:
		call.Identity = c.Credentials[up.Name].Username
	}
	return context.WithValue(ctx, upstreamCallKey{}, call)
}

// filled returns the blob fill's OnFilled callback, which reports a fill
// from up that completed (nil when nobody listens).
func (p *Proxy) filled(up Upstream) func(size int64, took time.Duration) {
	if p.OnFilled == nil {
		return nil
	}
	return func(size int64, took time.Duration) { p.OnFilled(up.Name, size, took) }
}
