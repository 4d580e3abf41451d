package registry

// Access: the cache never widens what an identity may read.
//
// Access is recorded per identity, upstream and repository: who the
// upstream answered (a client's own credentials, this handler's configured
// account for that upstream, or anonymous), which upstream, which
// repository. Only the upstream's final answer about the content itself
// confirms access: a 2xx to a request for that digest in that repository,
// after following redirects. A redirect is not an answer (registry.k8s.io
// redirects every request without looking), nor is the digest a tag
// resolves to.

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// Identities as access records name them.
const (
	// anonymousIdentity: the proxy asked the upstream without credentials.
	anonymousIdentity = "anonymous"
	// accountIdentity prefixes a configured account's user name.
	accountIdentity = "account:"
	// clientIdentity prefixes a client's own credentials (a keyed hash
	// from its token, or a hash of its upstream Authorization).
	clientIdentity = "client:"
)

// ownIdentity names the identity the proxy itself has at up: the
// configured account, or anonymous. Two sites configured with the same
// account have the same access; a site without one never reads what an
// account fetched.
func (p *Proxy) ownIdentity(up Upstream) string {
	if creds := p.Upstream.Credentials[up.Name]; creds != nil {
		return accountIdentity + url.QueryEscape(creds.Username)
	}
	return anonymousIdentity
}

// clientOwn names the credentials the client brought, or "" when it
// brought none (its requests go out as the proxy's own identity). A grant
// issued offline keeps its Subject but asks upstream as the proxy.
func clientOwn(g tokenauth.Grant) string {
	switch {
	case g.Subject != "":
		return clientIdentity + "sub:" + g.Subject
	case !g.Anonymous():
		sum := sha256.Sum256([]byte(g.Authorization))
		return clientIdentity + hex.EncodeToString(sum[:16])
	}
	return ""
}

// askedAs names who the upstream answers for requests made on grant's
// behalf: the client's credentials, or the proxy's own identity.
func (p *Proxy) askedAs(g tokenauth.Grant, up Upstream) string {
	if g.Anonymous() {
		return p.ownIdentity(up)
	}
	return clientOwn(g)
}

// accessScope names what an identity may read: a repository of an
// upstream, as that identity. It is the scope the store persists (and the
// shared tier carries) for the proxy's own identities.
func accessScope(identity string, t target, name string) string {
	return identity + "|" + t.up.String() + "/" + name
}

// confirmRead records that the upstream just served d of name to the
// identity grant's requests go out as. The proxy's own identities are
// persisted with the entry (every client of this handler may read what
// they may); a client's own credentials are confirmed in Cache.Confirmed,
// which holds them for confirmationTTL.
func (p *Proxy) confirmRead(grant tokenauth.Grant, t target, name string, d digest.Digest) {
	id := p.askedAs(grant, t.up)
	scope := accessScope(id, t, name)
	if grant.Anonymous() && p.Cache.Store.Allow(d, scope) == nil {
		return
	}
	// A client's credentials, or a digest the store does not hold.
	p.Cache.Confirmed.Confirm(confirmationKey(scope, d), time.Now())
}

func confirmationKey(scope string, d digest.Digest) string { return scope + "\x00" + d.String() }

// confirmTag records that the upstream just told grant's identity where
// req's tag points. That lets a HEAD of the tag be answered from its
// record; it says nothing of the content under the digest.
func (p *Proxy) confirmTag(grant tokenauth.Grant, t target, req APIPath) {
	p.Cache.Confirmed.Confirm(tagConfirmationKey(accessScope(p.askedAs(grant, t.up), t, req.Name), req.Tag), time.Now())
}

// tagConfirmed reports whether the upstream told grant's client where req's
// tag points lately: this handler's own identity within tag_ttl, or the
// client's credentials within a minute.
func (p *Proxy) tagConfirmed(grant tokenauth.Grant, t target, req APIPath) bool {
	c, now := p.Cache, time.Now()
	if c.Confirmed.Within(tagConfirmationKey(accessScope(p.ownIdentity(t.up), t, req.Name), req.Tag), max(c.confirmationTTL, c.TagTTL), now) {
		return true
	}
	client := clientOwn(grant)
	return client != "" && c.Confirmed.Within(tagConfirmationKey(accessScope(client, t, req.Name), req.Tag), c.confirmationTTL, now)
}

func tagConfirmationKey(scope, tag string) string { return scope + "\x00tag:" + tag }

// confirmedWithin reports whether the upstream confirmed identity's access to
// d of name within the last window.
func (c *Cache) confirmedWithin(identity string, t target, name string, d digest.Digest, window time.Duration) bool {
	return c.Confirmed.Within(confirmationKey(accessScope(identity, t, name), d), window, time.Now())
}

// readConfirmed reports whether grant's client may read d of name without
// asking the upstream: this handler's own identity may (recorded with the
// entry, or confirmed within tag_ttl), or the client's credentials were
// confirmed within window.
func (p *Proxy) readConfirmed(grant tokenauth.Grant, t target, name string, d digest.Digest, window time.Duration) bool {
	c := p.Cache
	own := p.ownIdentity(t.up)
	if c.Store.Allowed(d, accessScope(own, t, name)) || c.confirmedWithin(own, t, name, d, max(window, c.TagTTL)) {
		return true
	}
	client := clientOwn(grant)
	return client != "" && c.confirmedWithin(client, t, name, d, window)
}

// mayRead decides whether grant's identity may read cached content d of
// req's repository, and if not, answers the request as a refusal of the
// upstream's (the same answer a request for content the cache does not
// hold gets), or 503 when the upstream cannot be asked.
func (p *Proxy) mayRead(w http.ResponseWriter, r *http.Request, t target, req APIPath, grant tokenauth.Grant, d digest.Digest) bool {
	ok, resp, err := p.checkAccess(r, t, req, grant, d)
	switch {
	case ok:
		return true
	case resp != nil:
		p.writeRefusal(w, r, t, req, resp)
	default:
		p.Logger.Warn("upstream cannot confirm access to cached content",
			zap.String("upstream", t.up.Name), zap.String("repository", req.Name), zap.Error(err))
		setOutcome(w, t, Result{Outcome: OutcomeUpstreamError})
		WriteError(w, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: "the upstream registry cannot confirm access to " + req.Name + " right now"})
	}
	return false
}

func (p *Proxy) mayReadQuiet(r *http.Request, t target, req APIPath, grant tokenauth.Grant, d digest.Digest) bool {
	ok, resp, _ := p.checkAccess(r, t, req, grant, d)
	if resp != nil {
		drain(resp.Body)
	}
	return ok
}

// checkAccess reports whether grant's identity may read d in req's
// repository: known already, or confirmed now by the upstream's final
// answer to a HEAD of the digest (which Docker Hub does not count). A
// refusal comes back as the upstream's response (401, 403, 404).
func (p *Proxy) checkAccess(r *http.Request, t target, req APIPath, grant tokenauth.Grant, d digest.Digest) (bool, *http.Response, error) {
	c := p.Cache
	if p.readConfirmed(grant, t, req.Name, d, c.confirmationTTL) {
		return true, nil, nil
	}
	// When the upstream cannot answer, what it confirmed for this
	// client's own credentials lately still holds; nothing it never
	// confirmed does.
	confirmedBefore := func() bool {
		client := clientOwn(grant)
		return client != "" && c.confirmedWithin(client, t, req.Name, d, offlineAccessWindow)
	}
	ctx, stop := detached(r.Context(), revalidationTimeout)
	defer stop()
	resp, err := p.askAccess(r.WithContext(ctx), t, req, grant, d)
	if err != nil {
		return confirmedBefore(), nil, err
	}
	switch {
	case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent:
		drain(resp.Body)
		p.confirmRead(grant, t, req.Name, d)
		return true, nil, nil
	case refusedStatus(resp.StatusCode):
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

// askAccess asks the upstream for d in req's repository as grant's
// identity, following redirects to the final answer: a HEAD, and for a
// blob whose HEAD the redirect target will not answer (a URL signed for
// GET only) a GET of its first byte.
func (p *Proxy) askAccess(r *http.Request, t target, req APIPath, grant tokenauth.Grant, d digest.Digest) (*http.Response, error) {
	check := req
	check.Tag, check.Digest = "", d
	if req.Kind != KindBlob {
		check.Kind = KindManifest
	}
	o := outboundFor(r, check, http.MethodHead)
	if check.Kind == KindManifest && o.header.Get("Accept") == "" {
		o.header.Set("Accept", "*/*")
	}
	resp, err := p.Upstream.Do(r.Context(), t.up, grant, o)
	if err != nil || check.Kind != KindBlob || definitive(resp.StatusCode) || resp.StatusCode == http.StatusTooManyRequests {
		return resp, err
	}
	drain(resp.Body)
	o = outboundFor(r, check, http.MethodGet)
	o.header.Set("Range", "bytes=0-0")
	return p.Upstream.Do(r.Context(), t.up, grant, o)
}

// definitive reports whether an answer to an access check says yes or no
// for good: content served, or the registry's refusal.
func definitive(status int) bool {
	switch status {
	case http.StatusOK, http.StatusPartialContent, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return true
	}
	return false
}

// writeRefusal answers a request the upstream refused for this identity:
// the proxy's challenge for a 401, a registry error for 403 and 404. A
// refusal reads the same whether or not the cache holds the content, so
// that nobody learns what others pulled.
func (p *Proxy) writeRefusal(w http.ResponseWriter, r *http.Request, t target, req APIPath, resp *http.Response) {
	drain(resp.Body)
	setOutcome(w, t, Result{Outcome: OutcomeRefused, UpstreamStatus: resp.StatusCode})
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		p.writeChallenge(w, r, t, req, challengeError(resp.Header))
	case http.StatusForbidden:
		WriteError(w, &Error{Status: http.StatusForbidden, Code: CodeDenied, Message: "access to " + req.Name + " denied by the upstream registry"})
	default:
		WriteError(w, &Error{Status: http.StatusNotFound, Code: unknownCode(req.Kind), Message: req.Reference() + " is not in " + req.Name})
	}
}

// isRefusal reports whether an upstream answer to a request for content
// is a refusal that writeRefusal answers.
func isRefusal(req APIPath, status int) bool {
	if req.Kind != KindManifest && req.Kind != KindBlob {
		return false
	}
	return refusedStatus(status)
}

// confirmationTTL is how long a client identity's access to a repository,
// checked with the upstream, is trusted without asking again;
// offlineAccessWindow is how long it still counts when the upstream cannot
// be asked (stale-if-error for access, as for tags). It matches the token
// endpoint's offline window.
const (
	confirmationTTL     = time.Minute
	offlineAccessWindow = 24 * time.Hour
)
