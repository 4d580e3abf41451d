package registry

// Relay: upstream answers passed to the client in the proxy's form, and
// upstream failures as registry errors.

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/netguard"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// hopHeaders are removed from relayed responses (RFC 9110, 7.6.1), with
// the ones the proxy rewrites or must not pass on.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
	"Set-Cookie", "Www-Authenticate", "Location", "Alt-Svc", "Strict-Transport-Security",
}

// relay writes an upstream response to the client: 401s get the proxy's
// challenge, Link headers take the client's form, the body streams. res
// is the outcome of an answer with content; with the cache on, the
// upstream's refusals and failures are outcomes of their own.
func (c *pull) relay(resp *http.Response, res Result) {
	defer resp.Body.Close()
	if c.p.Cache != nil {
		if isRefusal(c.path, resp.StatusCode) {
			// The same answer as when the cache holds the content and
			// the access check is refused: nothing tells what is cached.
			c.writeRefusal(resp)
			return
		}
		res = relayedResult(resp.StatusCode, res)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		drain(resp.Body)
		setOutcome(c.w, c.t, res)
		c.p.writeChallenge(c.w, c.r, c.t, c.path, challengeError(resp.Header))
		return
	}
	w := c.w
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
	if conn := resp.Header.Get("Connection"); conn != "" {
		for _, k := range strings.Split(conn, ",") {
			h.Del(strings.TrimSpace(k))
		}
	}
	if links := resp.Header.Values("Link"); len(links) > 0 {
		h.Del("Link")
		for _, l := range links {
			h.Add("Link", rewriteLink(l, c.t))
		}
	}
	// Replaces the upstream's own Cache-Status, if any: it says nothing
	// of this cache.
	setOutcome(w, c.t, res)
	w.WriteHeader(resp.StatusCode)
	if c.r.Method == http.MethodHead {
		return
	}
	copyBody(w, resp.Body)
}

// relayedResult is the outcome of relaying an upstream answer of status
// that, had it been content, would have been res: the upstream's refusal,
// or its failure with nothing cached to serve instead.
func relayedResult(status int, res Result) Result {
	switch {
	case refusedStatus(status):
		return Result{Outcome: OutcomeRefused, UpstreamStatus: status}
	case failedStatus(status):
		return Result{Outcome: OutcomeUpstreamError, UpstreamStatus: status}
	}
	return res
}

// refusedStatus reports whether an upstream status refuses the client
// (401, 403, 404): an answer, which the cache never overrides.
func refusedStatus(status int) bool {
	return status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound
}

// failedStatus reports whether an upstream status is a failure rather
// than an answer (429, 5xx): what a stale record may be served for.
func failedStatus(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500
}

// rewriteLink makes a pagination Link point at the proxy in the client's
// form: relative, with the client's path prefix and ns=.
func rewriteLink(link string, t target) string {
	out, ok := withLinkURI(link, func(ref string) (string, bool) {
		u, err := url.Parse(ref)
		if err != nil {
			return "", false
		}
		rel := url.URL{Path: u.Path, RawQuery: u.RawQuery}
		if t.prefix != "/v2/" {
			rel.Path = t.prefix + strings.TrimPrefix(u.Path, "/v2/")
		}
		if t.ns != "" {
			q := rel.Query()
			q.Set("ns", t.ns)
			rel.RawQuery = q.Encode()
		}
		return rel.String(), true
	})
	if !ok {
		return link
	}
	return out
}

// withLinkURI returns a Link header value with its URI reference (RFC
// 8288: "<" URI-Reference ">" then parameters) replaced by what rewrite
// makes of it. ok is false when the value has no reference or rewrite
// refuses it.
func withLinkURI(link string, rewrite func(ref string) (string, bool)) (_ string, ok bool) {
	start, end := strings.IndexByte(link, '<'), strings.IndexByte(link, '>')
	if start < 0 || end < start {
		return "", false
	}
	ref, ok := rewrite(link[start+1 : end])
	if !ok {
		return "", false
	}
	return link[:start+1] + ref + link[end:], true
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// copyBody streams body to w. When the body fails after the header went
// out, the client's connection is aborted: a clean end would look like a
// complete response.
func copyBody(w http.ResponseWriter, body io.Reader) {
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	if _, err := io.CopyBuffer(writeOnly{w}, body, *buf); err != nil {
		panic(http.ErrAbortHandler)
	}
}

// writeUpstreamError answers for an upstream that failed to answer. The
// client learns which upstream and what kind of failure; the details (with
// internal addresses) go to the log only.
func (p *Proxy) writeUpstreamError(w http.ResponseWriter, t target, err error) {
	if e, retry, ok := failFast(t.up, err); ok {
		// Not sent at all (the upstream is paused or down): logged when
		// that began, not for every request.
		p.Logger.Debug("upstream not asked", zap.String("upstream", t.up.Name), zap.Error(err))
		setOutcome(w, t, p.upstreamErrorResult(0))
		w.Header().Set("Retry-After", retry)
		WriteError(w, e)
		return
	}
	p.Logger.Warn("upstream request failed", zap.String("upstream", t.up.Name), zap.Error(err))
	var mi *manifestInvalidError
	if errors.As(err, &mi) {
		// The upstream answered, with a manifest that is not what it
		// says: not a matter of availability (its fwd-status is 200).
		setOutcome(w, t, p.upstreamErrorResult(http.StatusOK))
		WriteError(w, &Error{Status: http.StatusBadGateway, Code: CodeManifestInvalid, Message: "the upstream's manifest does not match its digest: " + mi.msg})
		return
	}
	var se *upstreamStatusError
	var re *redirectError
	status, code, reason := http.StatusBadGateway, CodeUnavailable, "the request failed"
	var nerr net.Error
	var refused *netguard.RefusedError
	switch {
	case errors.As(err, &refused):
		// Before any other case: the refusal may be wrapped as a
		// redirect or a dial error.
		reason = "it sent the proxy to an internal address, which the proxy does not connect to"
	case errors.As(err, &re):
		reason = "it redirected " + re.reason
	case errors.As(err, &se):
		status, reason = se.status, "it answered "+strconv.Itoa(se.status)
		if status == http.StatusTooManyRequests {
			code = CodeTooManyRequests
		}
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &nerr) && nerr.Timeout():
		status, reason = http.StatusGatewayTimeout, "it did not answer in time"
	case errors.As(err, new(*net.OpError)) || isDialFailure(err):
		reason = "it cannot be reached"
	case errors.Is(err, tokenauth.ErrRefused):
		reason = "it refused the proxy's configured credentials"
	}
	upstreamStatus := 0
	if se != nil {
		upstreamStatus = se.status
	}
	setOutcome(w, t, p.upstreamErrorResult(upstreamStatus))
	name := "the upstream registry"
	if _, public := wellKnown[t.up.Name]; public {
		name = "upstream registry " + t.up.Name
	}
	WriteError(w, &Error{Status: status, Code: code, Message: name + " is unavailable: " + reason})
}

// upstreamErrorResult is the outcome of a request the upstream failed
// (with upstreamStatus, or 0 for no answer): with the cache off, a bypass
// like any other of its responses.
func (p *Proxy) upstreamErrorResult(upstreamStatus int) Result {
	if p.Cache == nil {
		return resultBypass
	}
	return Result{Outcome: OutcomeUpstreamError, UpstreamStatus: upstreamStatus}
}

// isDialFailure recognises connection failures that transports wrap in
// types errors.As cannot see through (Caddy's DialError).
func isDialFailure(err error) bool {
	msg := err.Error()
	for _, s := range []string{"connection refused", "no such host", "network is unreachable", "connection reset", "dial tcp"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
