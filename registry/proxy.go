package registry

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/netguard"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// Proxy is the registry request path: route, validate, authenticate, then
// the cache, then the upstream.
type Proxy struct {
	Router   *Router
	Upstream *Client
	Auth     *tokenauth.Endpoint
	// Cache is nil when caching is off.
	Cache  *Cache
	Logger *zap.Logger
	// Scheme tells the scheme the client used (https, or http), for the
	// realm the proxy gives clients.
	Scheme func(*http.Request) string
	// OnFillFailure, if set, counts a blob fill that the upstream's body
	// failed, by FillFailureReasons (for the handler's metrics).
	OnFillFailure func(reason string)
}

// target is where a request goes: the upstream, and how the client
// addressed it (so redirects and realms keep the client's form).
type target struct {
	up Upstream
	// prefix is the client's path before the repository name: "/v2/", or
	// "/v2/ghcr.io/" when the registry was named in the path.
	prefix string
	// ns is containerd's ?ns= value, kept in realms and links.
	ns string
	// outcome is where setOutcome records the response's outcome, for
	// Serve to return.
	outcome *Result
}

// ServeHTTP serves one registry API request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.Serve(w, r)
}

// Serve serves one registry API request and returns its outcome (what the
// Cache-Status header says), for the handler's metrics.
func (p *Proxy) Serve(w http.ResponseWriter, r *http.Request) Result {
	// The request path records the outcome through the target it passes
	// along, which escapes to the heap: a pooled record keeps that from
	// costing every request an allocation. Nothing records an outcome
	// once the response is written (work that outlives a request has no
	// ResponseWriter), so the record is free again when serve returns.
	rec := outcomeRecords.Get().(*Result)
	*rec = Result{}
	p.serve(w, r, rec)
	res := *rec
	outcomeRecords.Put(rec)
	return res
}

var outcomeRecords = sync.Pool{New: func() any { return new(Result) }}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, res *Result) {
	// 1. Route: ?ns=, a registry host as the first path component, Host.
	t, routed, rerr := p.route(r)
	if rerr != nil {
		WriteError(w, rerr)
		return
	}
	if !routed {
		p.writeRoutes(w)
		return
	}
	if r.URL.Path == "/" || r.URL.Path == "" {
		http.Redirect(w, r, "/v2/", http.StatusMovedPermanently)
		return
	}
	t.outcome = res

	// 2. Validate before anything goes upstream.
	apiPath := r.URL.Path
	if t.prefix != "/v2/" { // the registry named in the path is routing, not name
		apiPath = "/v2/" + strings.TrimPrefix(apiPath, t.prefix)
	}
	req, perr := ParsePath(r.Method, apiPath)
	if perr != nil {
		WriteError(w, perr)
		return
	}

	// 3. Docker Hub keeps official images under library/.
	if t.up.IsDockerHub() && req.Name != "" && !strings.Contains(req.Name, "/") {
		p.redirectToLibrary(w, r, t, req)
		return
	}

	// 4. Authentication: the proxy's token endpoint, then the caller's grant.
	if req.Kind == KindAuth {
		p.serveToken(w, r, t)
		return
	}
	grant, err := p.Auth.Identify(r, t.up.String())
	if err != nil {
		p.writeChallenge(w, r, t, req, "invalid_token")
		return
	}
	if req.Kind == KindBase {
		p.serveBase(w, r, t)
		return
	}

	// 5. The cache, then the upstream.
	switch req.Kind {
	case KindManifest:
		p.serveManifest(w, r, t, req, grant)
	case KindBlob:
		p.serveBlob(w, r, t, req, grant)
	default: // tags/list, referrers: from the upstream, kept for when it fails
		p.serveList(w, r, t, req, grant)
	}
}

// route finds the upstream of r. An unknown host (without a fallback) is
// routed=false, whatever the path. On a known host, ?ns= or a registry
// named in the path picks among the configured upstreams only (never an
// open proxy to any registry); an unconfigured one is an error.
func (p *Proxy) route(r *http.Request) (t target, routed bool, _ *Error) {
	t.prefix = "/v2/"
	up, known := p.Router.ForHost(r.Host)
	if !known && up.URL == nil {
		return t, false, nil
	}
	t.up = up
	if ns := r.URL.Query().Get("ns"); ns != "" {
		up, ok := p.Router.ByName(ns)
		if !ok {
			// The configured registries' names may be internal
			// host:ports: they go to the log, not to the client.
			p.Logger.Debug("ns= names no configured registry", zap.String("ns", ns), zap.Strings("registries", p.Router.Names()))
			return t, false, &Error{Status: http.StatusNotFound, Code: CodeNameUnknown,
				Message: "registry " + ns + " is not proxied here"}
		}
		t.up, t.ns = up, ns
		return t, true, nil
	}
	if rest, ok := strings.CutPrefix(r.URL.Path, "/v2/"); ok {
		if first, _, ok := strings.Cut(rest, "/"); ok && looksLikeRegistryHost(first) {
			if up, ok := p.Router.ByName(first); ok {
				t.up, t.prefix = up, "/v2/"+first+"/"
			}
		}
	}
	return t, true, nil
}

// looksLikeRegistryHost tells a registry host (ghcr.io, localhost:5000)
// from the first component of a repository name, which has neither dots
// before a slash in Docker Hub names nor a port.
func looksLikeRegistryHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

// writeRoutes answers a request for a host this proxy does not serve.
func (p *Proxy) writeRoutes(w http.ResponseWriter) {
	body, _ := json.Marshal(map[string]any{
		"routes":  p.Router.Table(),
		"message": "Available registry routes",
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write(body)
}

func (p *Proxy) redirectToLibrary(w http.ResponseWriter, r *http.Request, t target, req Request) {
	rest := strings.TrimPrefix(r.URL.Path, t.prefix+req.Name)
	loc := t.prefix + "library/" + req.Name + rest
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusMovedPermanently)
}

// realm is the URL of the proxy's token endpoint as this client reaches it.
func (p *Proxy) realm(r *http.Request, t target) string {
	u := url.URL{Scheme: p.Scheme(r), Host: r.Host, Path: "/v2/auth"}
	if t.prefix != "/v2/" {
		u.Path = t.prefix + "auth"
	}
	if t.ns != "" {
		u.RawQuery = url.Values{"ns": {t.ns}}.Encode()
	}
	return u.String()
}

// writeChallenge answers 401 with the proxy's realm and the upstream's
// service name, so clients fetch their token from the proxy.
func (p *Proxy) writeChallenge(w http.ResponseWriter, r *http.Request, t target, req Request, errParam string) {
	ch := p.challengeFor(r, t, req, errParam)
	w.Header().Set("Www-Authenticate", ch.String())
	WriteError(w, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Message: "authentication required"})
}

func (p *Proxy) challengeFor(r *http.Request, t target, req Request, errParam string) tokenauth.Challenge {
	params := map[string]string{"realm": p.realm(r, t), "service": t.up.Name}
	if ch := p.Upstream.learnt(t.up); ch != nil && ch.Service() != "" {
		params["service"] = ch.Service()
	}
	if req.Name != "" {
		params["scope"] = "repository:" + req.Name + ":pull"
	}
	if errParam != "" {
		params["error"] = errParam
	}
	return tokenauth.Challenge{Scheme: "Bearer", Params: params}
}

// serveBase answers GET /v2/ as a registry with token authentication
// does: 200 to one of the proxy's tokens (Identify refused any other),
// else the upstream's challenge pointing at the proxy's realm, so that
// docker login and pulls ask the proxy for tokens. Basic credentials are
// checked at the realm, not here: answering them 200 would tell a client
// that any password logs in. Only a client without credentials, of an
// upstream that asks for none, gets 200 anonymously.
func (p *Proxy) serveBase(w http.ResponseWriter, r *http.Request, t target) {
	switch auth := r.Header.Get("Authorization"); {
	case isBearer(auth):
	case auth != "":
		p.writeChallenge(w, r, t, Request{}, "")
		return
	default:
		ch, err := p.Upstream.Challenge(r.Context(), t.up)
		if err != nil {
			// Offline: still point the client at our realm; the
			// cache can serve anonymous pulls.
			p.Logger.Debug("upstream challenge unavailable", zap.String("upstream", t.up.Name), zap.Error(err))
		}
		if err != nil || ch != nil {
			p.writeChallenge(w, r, t, Request{}, "")
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "{}")
}

// isBearer reports whether an Authorization value is a bearer token.
func isBearer(authorization string) bool {
	scheme, _, _ := strings.Cut(authorization, " ")
	return strings.EqualFold(scheme, "Bearer")
}

// serveToken runs the proxy's token endpoint for t's upstream. The whole
// request is validated first: a malformed one is answered without the
// upstream being asked anything, not even for its challenge.
func (p *Proxy) serveToken(w http.ResponseWriter, r *http.Request, t target) {
	treq, rerr := tokenauth.ParseRequest(r)
	if rerr != nil {
		rerr.Write(w)
		return
	}
	up := tokenauth.Upstream{ID: t.up.String()}
	ch, err := p.Upstream.Challenge(r.Context(), t.up)
	if err != nil {
		up.Unreachable = err
	}
	up.Challenge = ch
	if t.up.IsDockerHub() {
		up.NormalizeScope = func(s tokenauth.Scope) tokenauth.Scope {
			if strings.HasPrefix(s.Type, "repository") && !strings.Contains(s.Name, "/") {
				s.Name = "library/" + s.Name
			}
			return s
		}
	}
	up.CheckBasic = func(ctx context.Context, authorization string) error {
		return p.Upstream.CheckBasic(ctx, t.up, authorization)
	}
	// The realm gets a client's credentials: it is held to the
	// upstream's netguard policy like any host the upstream names.
	p.Auth.Serve(w, r.WithContext(p.Upstream.guard(r.Context(), t.up)), treq, up)
}

// forward sends the request upstream as grant's identity and relays the
// answer as res (see relay).
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant, res Result) {
	resp, err := p.Upstream.Do(r.Context(), t.up, grant, outboundFor(r, req, r.Method))
	if err != nil {
		p.writeUpstreamError(w, t, err)
		return
	}
	p.relay(w, r, t, req, resp, res)
}

// outboundFor is req as an upstream request with method, carrying the
// client headers it needs.
func outboundFor(r *http.Request, req Request, method string) outbound {
	return outbound{
		method: method,
		path:   upstreamPath(req) + upstreamQuery(r, req),
		header: forwardHeaders(r, req),
		scope:  "repository:" + req.Name + ":pull",
		kind:   req.Kind,
	}
}

// upstreamPath is the request's path on the upstream.
func upstreamPath(req Request) string {
	switch req.Kind {
	case KindManifest:
		return "/v2/" + req.Name + "/manifests/" + req.Reference()
	case KindBlob:
		return "/v2/" + req.Name + "/blobs/" + req.Digest.String()
	case KindTags:
		return "/v2/" + req.Name + "/tags/list"
	case KindReferrers:
		return "/v2/" + req.Name + "/referrers/" + req.Digest.String()
	}
	return "/v2/"
}

// upstreamQuery keeps the query parameters the API defines for the kind
// (pagination, artifact filters); ns= is the proxy's, not the upstream's.
func upstreamQuery(r *http.Request, req Request) string {
	var keep []string
	switch req.Kind {
	case KindTags:
		keep = []string{"n", "last"}
	case KindReferrers:
		keep = []string{"artifactType"}
	default:
		return ""
	}
	in := r.URL.Query()
	out := url.Values{}
	for _, k := range keep {
		if v, ok := in[k]; ok {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return ""
	}
	return "?" + out.Encode()
}

// forwardHeaders are the client headers an upstream needs: Accept for
// manifests and referrers, Range for blobs, the client's User-Agent. Never
// the client's Authorization: the identity decides that. Malformed values
// are not passed on: an Accept goes as normaliseAccept makes it, exactly as
// it keys records, and a Range that does not parse is ignored (RFC 9110
// lets a server do that).
func forwardHeaders(r *http.Request, req Request) http.Header {
	h := http.Header{}
	if ua := r.Header.Get("User-Agent"); ua != "" {
		h.Set("User-Agent", ua)
	}
	switch req.Kind {
	case KindManifest, KindReferrers:
		if accept := acceptKey(r.Header.Values("Accept")); accept != "" {
			h.Set("Accept", accept)
		}
	case KindBlob:
		if v := r.Header.Get("Range"); validByteRanges(v) {
			h.Set("Range", v)
		}
	}
	return h
}

// byteRanges matches the form of a Range header of byte ranges: optional
// whitespace around commas is SP or HTAB only (anything else is no valid
// header value to send).
var byteRanges = regexp.MustCompile(`^bytes=(?:\d+-\d*|-\d+)(?:[ \t]*,[ \t]*(?:\d+-\d*|-\d+))*$`)

// validByteRanges reports whether v is a byte-range set that may go
// upstream: of byteRanges' form, and no range ending before it starts
// (RFC 9110 calls such a set invalid; a server may answer it with 416 or
// with the whole blob). Positions too large for an int64 are dropped too.
func validByteRanges(v string) bool {
	if !byteRanges.MatchString(v) {
		return false
	}
	for spec := range strings.SplitSeq(strings.TrimPrefix(v, "bytes="), ",") {
		first, last, _ := strings.Cut(strings.Trim(spec, " \t"), "-")
		if first == "" || last == "" {
			if _, err := strconv.ParseInt(first+last, 10, 64); err != nil {
				return false
			}
			continue
		}
		f, err1 := strconv.ParseInt(first, 10, 64)
		l, err2 := strconv.ParseInt(last, 10, 64)
		if err1 != nil || err2 != nil || l < f {
			return false
		}
	}
	return true
}

// hopHeaders are removed from relayed responses (RFC 9110, 7.6.1), with
// the ones the proxy rewrites or must not pass on.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
	"Set-Cookie", "Www-Authenticate", "Location", "Alt-Svc", "Strict-Transport-Security",
}

// relay writes an upstream response to the client: 401s get the proxy's
// challenge, Link headers keep the client's form, the body streams. res
// is the outcome of an answer with content; with the cache on, the
// upstream's refusals and failures are outcomes of their own.
func (p *Proxy) relay(w http.ResponseWriter, r *http.Request, t target, req Request, resp *http.Response, res Result) {
	defer resp.Body.Close()
	if p.Cache != nil {
		if isRefusal(req, resp.StatusCode) {
			// The same answer as when the cache holds the content and
			// the access check is refused: nothing tells what is cached.
			p.writeRefusal(w, r, t, req, resp)
			return
		}
		res = relayedResult(resp.StatusCode, res)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		drain(resp.Body)
		errParam := ""
		if ch := pickChallenge(resp.Header); ch != nil {
			errParam = ch.Params["error"]
		}
		setOutcome(w, t, res)
		p.writeChallenge(w, r, t, req, errParam)
		return
	}
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
	if c := resp.Header.Get("Connection"); c != "" {
		for _, k := range strings.Split(c, ",") {
			h.Del(strings.TrimSpace(k))
		}
	}
	if links := resp.Header.Values("Link"); len(links) > 0 {
		h.Del("Link")
		for _, l := range links {
			h.Add("Link", rewriteLink(l, t))
		}
	}
	// Replaces the upstream's own Cache-Status, if any: it says nothing
	// of this cache.
	setOutcome(w, t, res)
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return
	}
	copyBody(w, resp.Body)
}

// relayedResult is the outcome of relaying an upstream answer of status
// that, had it been content, would have been res: the upstream's refusal,
// or its failure with nothing cached to serve instead.
func relayedResult(status int, res Result) Result {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound:
		return Result{Outcome: OutcomeRefused, UpstreamStatus: status}
	case status == http.StatusTooManyRequests || status >= 500:
		return Result{Outcome: OutcomeUpstreamError, UpstreamStatus: status}
	}
	return res
}

// rewriteLink makes a pagination Link point at the proxy in the client's
// form: relative, with the client's path prefix and ns=.
func rewriteLink(link string, t target) string {
	start, end := strings.IndexByte(link, '<'), strings.IndexByte(link, '>')
	if start < 0 || end < start {
		return link
	}
	u, err := url.Parse(link[start+1 : end])
	if err != nil {
		return link
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
	return link[:start+1] + rel.String() + link[end:]
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
