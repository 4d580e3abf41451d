package registry

import (
	"errors"
	"net/http"

	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// pull is one request for content (a manifest, a blob, a list) in flight:
// routed, validated and authenticated, with what every step of serving it
// needs. Its methods are those steps.
//
// A method that may write the response returns answered: true when it
// wrote it (content, a refusal or an error), and then the caller writes
// nothing more; false when the request is still to be answered.
//
// Work shared with other requests (an upstream round, a fill) may outlive
// this one: it gets its own copy from detach, never the pull itself.
type pull struct {
	p     *Proxy
	w     http.ResponseWriter
	r     *http.Request
	t     target
	path  APIPath
	grant tokenauth.Grant
}

// detach is c for work shared with other requests, which may outlive this
// one: a copy without the ResponseWriter and the outcome record, which are
// this request's only.
func (c *pull) detach() *pull {
	d := *c
	d.w, d.t.outcome = nil, nil
	return &d
}

// do sends o upstream as the grant's identity, under the request's context.
func (c *pull) do(o outbound) (*http.Response, error) {
	return c.p.Upstream.Do(c.r.Context(), c.t.up, c.grant, o)
}

// askedAs names who the upstream answers for this pull's requests.
func (c *pull) askedAs() string { return c.p.askedAs(c.grant, c.t.up) }

// writeUpstreamError answers for an upstream that failed to answer. A 429
// that paused this identity tells the client when to come back.
func (c *pull) writeUpstreamError(err error) {
	var se *upstreamStatusError
	if errors.As(err, &se) && se.status == http.StatusTooManyRequests {
		if pe := c.p.Upstream.state.pausedFor(c.t.up, requestIdentity(c.grant), c.p.Upstream.now()); pe != nil {
			c.w.Header().Set("Retry-After", retryAfter(pe.until, pe.now))
		}
	}
	c.p.writeUpstreamError(c.w, c.t, err)
}
