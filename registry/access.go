package registry

// Access: the cache never widens what an identity may read.

import (
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// grantRead records that grant's identity may read d in scope.
func (p *Proxy) grantRead(grant tokenauth.Grant, scope string, d digest.Digest) {
	if grant.Anonymous() {
		// The upstream served the proxy's own identity: every client
		// of the route may read it. A digest the store does not hold
		// (a tag resolved by a HEAD) is remembered as a verdict instead.
		if p.Cache.Store.Allow(d, scope) == nil {
			return
		}
	}
	p.Cache.remember(grant, scope, d)
}

func (c *Cache) remember(grant tokenauth.Grant, scope string, d digest.Digest) {
	c.Verdicts.Confirm(verdictKey(grant, scope, d), time.Now())
}

// remembered reports whether the upstream confirmed grant's access to d in
// scope within the last window.
func (c *Cache) remembered(grant tokenauth.Grant, scope string, d digest.Digest, window time.Duration) bool {
	return c.Verdicts.Within(verdictKey(grant, scope, d), window, time.Now())
}

func verdictKey(grant tokenauth.Grant, scope string, d digest.Digest) string {
	return identityKey(grant) + "\x00" + scope + "\x00" + d.String()
}

// mayRead decides whether grant's identity may read cached content d of
// req's repository, and if not, answers the request (401 with the proxy's
// challenge, the upstream's 404, or 503 when the upstream cannot be asked).
// The cache never widens access: content is served to every client of a
// route only if the proxy's own identity could read it in that repository;
// anything else needs the upstream to accept this identity (a HEAD, which
// Docker Hub does not count).
func (p *Proxy) mayRead(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant, d digest.Digest) bool {
	ok, resp, err := p.checkAccess(r, t, req, grant, d)
	switch {
	case ok:
		return true
	case resp != nil:
		// The upstream's answer was to a HEAD: answer this request
		// with the registry error that status means.
		drain(resp.Body)
		w.Header().Set("Cache-Status", statusRefused+"; fwd-status="+strconv.Itoa(resp.StatusCode))
		p.writeDenied(w, r, t, req, resp)
	default:
		w.Header().Set("Cache-Status", statusRefused+"; detail=upstream-unavailable")
		WriteError(w, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: "the upstream registry cannot confirm access to " + req.Name + " right now: " + err.Error()})
	}
	return false
}

func (p *Proxy) mayReadQuiet(r *http.Request, t target, req Request, grant tokenauth.Grant, d digest.Digest) bool {
	ok, resp, _ := p.checkAccess(r, t, req, grant, d)
	if resp != nil {
		drain(resp.Body)
	}
	return ok
}

func (p *Proxy) checkAccess(r *http.Request, t target, req Request, grant tokenauth.Grant, d digest.Digest) (bool, *http.Response, error) {
	c := p.Cache
	scope := accessScope(t, req.Name)
	// What the upstream confirmed for the proxy's own identity holds as
	// long as a tag does: within tag_ttl nothing is asked upstream.
	window := c.verdictTTL
	if grant.Anonymous() {
		window = max(window, c.TagTTL)
	}
	if c.Store.Allowed(d, scope) || c.remembered(grant, scope, d, window) {
		return true, nil, nil
	}
	// When the upstream cannot answer, what it confirmed for this client
	// lately still holds; nothing it never confirmed does.
	confirmedBefore := func() bool {
		return grant.Subject != "" && c.remembered(grant, scope, d, offlineAccessWindow)
	}
	check := req
	check.Tag, check.Digest = "", d
	if req.Kind != KindBlob {
		check.Kind = KindManifest
	}
	o := outboundFor(r, check, http.MethodHead)
	// The registry's own redirect (to a CDN) already says yes: following
	// it would ask a host that knows nothing of access, with a URL that
	// may be signed for GET only.
	o.keepRedirect = true
	if o.header.Get("Accept") == "" && check.Kind == KindManifest {
		o.header.Set("Accept", "*/*")
	}
	ctx, stop := detached(r.Context(), revalidationTimeout)
	defer stop()
	resp, err := p.Upstream.Do(ctx, t.up, grant, o)
	if err != nil {
		return confirmedBefore(), nil, err
	}
	switch {
	case resp.StatusCode < 400:
		drain(resp.Body)
		p.grantRead(grant, scope, d)
		return true, nil, nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusNotFound:
		if grant.Anonymous() && confirmedBefore() {
			// An offline grant asks with the proxy's identity, which
			// the upstream may refuse what it confirmed for the client.
			drain(resp.Body)
			return true, nil, nil
		}
		return false, resp, nil
	default:
		drain(resp.Body)
		return confirmedBefore(), nil, &upstreamStatusError{status: resp.StatusCode}
	}
}

// writeDenied answers a request the upstream refused for this identity.
func (p *Proxy) writeDenied(w http.ResponseWriter, r *http.Request, t target, req Request, resp *http.Response) {
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		errParam := ""
		if ch := pickChallenge(resp.Header); ch != nil {
			errParam = ch.Params["error"]
		}
		p.writeChallenge(w, r, t, req, errParam)
	case http.StatusForbidden:
		WriteError(w, &Error{Status: http.StatusForbidden, Code: CodeDenied, Message: "access to " + req.Name + " denied by the upstream registry"})
	default:
		code := CodeManifestUnknown
		if req.Kind == KindBlob {
			code = CodeBlobUnknown
		}
		WriteError(w, &Error{Status: http.StatusNotFound, Code: code, Message: req.Reference() + " is not in " + req.Name})
	}
}
