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
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
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
// configured account, or anonymous. An account is named by its user and a
// keyed hash of user and secret (the sealing key's, which every instance
// behind one load balancer shares): two sites configured with the same
// account have the same access; a site without it, or with another secret
// for the same user, never reads what the account fetched.
func (p *Proxy) ownIdentity(up Upstream) string {
	creds := p.Upstream.Credentials[up.Name]
	if creds == nil {
		return anonymousIdentity
	}
	if id, ok := p.ownIdentities.Load(up.Name); ok {
		return id.(string)
	}
	id := accountIdentity + url.QueryEscape(creds.Username) + ":" + p.Auth.Sealer.Subject(up.String(), *creds)
	p.ownIdentities.Store(up.Name, id)
	return id
}

// clientOwn names the credentials the client brought, or "" when it
// brought none (its requests go out as the proxy's own identity). A grant
// issued offline carries its Subject but asks upstream as the proxy.
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

// confirmRead records that the upstream just served d of c's repository
// to the identity c's requests go out as. The proxy's own identities are
// persisted with the entry (every client of this handler may read what
// they may); a client's own credentials are confirmed in Cache.Confirmed,
// which holds them for confirmationTTL.
func (c *pull) confirmRead(d digest.Digest) {
	scope := accessScope(c.askedAs(), c.t, c.path.Name)
	if c.grant.Anonymous() && c.p.Cache.Store.Allow(d, scope) == nil {
		return
	}
	// A client's credentials, or a digest the store does not hold.
	c.p.Cache.Confirmed.Confirm(confirmationKey(scope, d), c.p.Cache.now())
}

func confirmationKey(scope string, d digest.Digest) string { return scope + "\x00" + d.String() }

// confirmTag records that the upstream just told c's identity where c's
// tag points. That lets a HEAD of the tag be answered from its record; it
// says nothing of the content under the digest.
func (c *pull) confirmTag() {
	c.p.Cache.Confirmed.Confirm(tagConfirmationKey(accessScope(c.askedAs(), c.t, c.path.Name), c.path.Tag), c.p.Cache.now())
}

// tagConfirmed reports whether the upstream told c's client where c's tag
// points lately: this handler's own identity within tag_ttl, or the
// client's credentials within a minute.
func (c *pull) tagConfirmed() bool {
	cache := c.p.Cache
	now := cache.now()
	if cache.Confirmed.Within(tagConfirmationKey(accessScope(c.p.ownIdentity(c.t.up), c.t, c.path.Name), c.path.Tag), max(cache.confirmationTTL, cache.TagTTL), now) {
		return true
	}
	client := clientOwn(c.grant)
	return client != "" && cache.Confirmed.Within(tagConfirmationKey(accessScope(client, c.t, c.path.Name), c.path.Tag), cache.confirmationTTL, now)
}

func tagConfirmationKey(scope, tag string) string { return scope + "\x00tag:" + tag }

// confirmedWithin reports whether the upstream confirmed identity's access to
// d of name within the last window.
func (c *Cache) confirmedWithin(identity string, t target, name string, d digest.Digest, window time.Duration) bool {
	return c.Confirmed.Within(confirmationKey(accessScope(identity, t, name), d), window, c.now())
}

// readConfirmed reports whether c's client may read d of c's repository
// without asking the upstream: this handler's own identity may (recorded
// with the entry, or confirmed within tag_ttl), or the client's
// credentials were confirmed within window.
func (c *pull) readConfirmed(d digest.Digest, window time.Duration) bool {
	cache := c.p.Cache
	own := c.p.ownIdentity(c.t.up)
	if cache.Store.Allowed(d, accessScope(own, c.t, c.path.Name)) || cache.confirmedWithin(own, c.t, c.path.Name, d, max(window, cache.TagTTL)) {
		return true
	}
	client := clientOwn(c.grant)
	return client != "" && cache.confirmedWithin(client, c.t, c.path.Name, d, window)
}

// denyUnreadable answers the request if c's identity may not read cached
// content d of c's repository: as a refusal of the upstream's (the same
// answer a request for content the cache does not hold gets), or 503 when
// the upstream cannot be asked.
func (c *pull) denyUnreadable(d digest.Digest) (answered bool) {
	ok, resp, err := c.checkAccess(d)
	switch {
	case ok:
		return false
	case resp != nil:
		c.writeRefusal(resp)
	default:
		c.p.Logger.Warn("upstream cannot confirm access to cached content",
			zap.String("upstream", c.t.up.Name), zap.String("repository", c.path.Name), zap.Error(err))
		setOutcome(c.w, c.t, Result{Outcome: OutcomeUpstreamError})
		WriteError(c.w, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: "the upstream registry cannot confirm access to " + c.path.Name + " right now"})
	}
	return true
}

// mayRead reports whether c's identity may read cached content d of c's
// repository, answering nothing.
func (c *pull) mayRead(d digest.Digest) bool {
	ok, resp, _ := c.checkAccess(d)
	if resp != nil {
		drain(resp.Body)
	}
	return ok
}

// checkAccess reports whether c's identity may read d in c's repository:
// known already, or confirmed now by the upstream's final answer to a HEAD
// of the digest (which Docker Hub does not count). A refusal comes back as
// the upstream's response (401, 403, 404).
func (c *pull) checkAccess(d digest.Digest) (bool, *http.Response, error) {
	cache := c.p.Cache
	if c.readConfirmed(d, cache.confirmationTTL) {
		return true, nil, nil
	}
	// When the upstream cannot answer, what it confirmed for this
	// client's own credentials lately still holds; nothing it never
	// confirmed does.
	confirmedBefore := func() bool {
		client := clientOwn(c.grant)
		return client != "" && cache.confirmedWithin(client, c.t, c.path.Name, d, tokenauth.OfflineWindow)
	}
	ctx, stop := detached(c.r.Context(), revalidationTimeout)
	defer stop()
	resp, err := c.askAccess(ctx, d)
	if err != nil {
		return confirmedBefore(), nil, err
	}
	switch {
	case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent:
		drain(resp.Body)
		if !isAnswerAbout(resp, d, cache.sizeOf(d)) {
			// A 2xx about other content (a server that answers
			// everything) says nothing of this one.
			return confirmedBefore(), nil, fmt.Errorf("upstream's answer for %s names other content", d)
		}
		c.confirmRead(d)
		return true, nil, nil
	case refusedStatus(resp.StatusCode):
		if c.grant.Anonymous() && confirmedBefore() {
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

// askAccess asks the upstream, under ctx, for d in c's repository as c's
// identity, following redirects to the final answer: a HEAD, and for a
// blob whose HEAD the redirect target will not answer (a URL signed for
// GET only) a GET of its first byte.
func (c *pull) askAccess(ctx context.Context, d digest.Digest) (*http.Response, error) {
	check := c.path
	check.Tag, check.Digest = "", d
	if c.path.Kind != KindBlob {
		check.Kind = KindManifest
	}
	o := outboundFor(c.r, check, http.MethodHead)
	if check.Kind == KindManifest && o.header.Get("Accept") == "" {
		o.header.Set("Accept", "*/*")
	}
	resp, err := c.p.Upstream.Do(ctx, c.t.up, c.grant, o)
	if err != nil || check.Kind != KindBlob || definitive(resp.StatusCode) || resp.StatusCode == http.StatusTooManyRequests {
		return resp, err
	}
	drain(resp.Body)
	o = outboundFor(c.r, check, http.MethodGet)
	o.header.Set("Range", "bytes=0-0")
	return c.p.Upstream.Do(ctx, c.t.up, c.grant, o)
}

// definitive reports whether an answer to an access check says yes or no
// for good: content served, or the registry's refusal.
func definitive(status int) bool {
	return status == http.StatusOK || status == http.StatusPartialContent || refusedStatus(status)
}

// isAnswerAbout reports whether a 2xx answer to an access check is about
// content d of size bytes (size < 0: not known here): its
// Docker-Content-Digest, where it sends one, names d; else its length
// (Content-Length of a 200, the total of a 206's Content-Range) is size.
// Registries send both on a HEAD, object stores the length; a server that
// answers every path alike matches neither.
func isAnswerAbout(resp *http.Response, d digest.Digest, size int64) bool {
	if claimed := resp.Header.Get("Docker-Content-Digest"); claimed != "" {
		return claimed == d.String()
	}
	if size < 0 {
		return true // nothing here to check it against
	}
	if resp.StatusCode == http.StatusPartialContent {
		_, total, ok := strings.Cut(resp.Header.Get("Content-Range"), "/")
		return ok && total == strconv.FormatInt(size, 10)
	}
	return resp.ContentLength == size
}

// writeRefusal answers a request the upstream refused for this identity:
// the proxy's challenge for a 401, a registry error for 403 and 404. A
// refusal reads the same whether or not the cache holds the content, so
// that nobody learns what others pulled.
func (c *pull) writeRefusal(resp *http.Response) {
	drain(resp.Body)
	setOutcome(c.w, c.t, Result{Outcome: OutcomeRefused, UpstreamStatus: resp.StatusCode})
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		c.p.writeChallenge(c.w, c.r, c.t, c.path, challengeError(resp.Header))
	case http.StatusForbidden:
		WriteError(c.w, &Error{Status: http.StatusForbidden, Code: CodeDenied, Message: "access to " + c.path.Name + " denied by the upstream registry"})
	default:
		WriteError(c.w, &Error{Status: http.StatusNotFound, Code: unknownCode(c.path.Kind), Message: c.path.Reference() + " is not in " + c.path.Name})
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
// checked with the upstream, is trusted without asking again; while the
// upstream cannot be asked, it counts for tokenauth.OfflineWindow.
const confirmationTTL = time.Minute
