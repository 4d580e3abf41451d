package registry

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/accounts"
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
	OnFillFailure func(upstream, reason string)
	// OnFilled, if set, hears of each blob fill from an upstream that
	// completed: its size and how long its bytes took (observe.go).
	OnFilled func(upstream string, size int64, took time.Duration)
	// Page, if set, may answer a GET or HEAD of / on a routed host in
	// place of the redirect to /v2/ (a page for browsers); it reports
	// whether it did.
	Page func(http.ResponseWriter, *http.Request) bool

	// Accounts, if set, makes the site private: every request needs a
	// token of one of these proxy accounts (gates.go). Rules, if set,
	// say which repositories of each upstream are served (rules.go).
	Accounts *accounts.Checker
	Rules    *Rules
	// ClientAddr is the client's IP address (for slowing down failed
	// logins); OnAccount learns which account a request is (for the
	// access log). Either may be nil.
	ClientAddr func(*http.Request) string
	OnAccount  func(r *http.Request, account string)

	// ownIdentities memoizes ownIdentity per upstream name: it is asked
	// on every cache hit, and the configured credentials do not change.
	ownIdentities sync.Map
}

// target is where a request goes: the upstream, and how the client
// addressed it (so redirects and realms follow the client's form).
type target struct {
	up Upstream
	// prefix is the client's path before the repository name: "/v2/", or
	// "/v2/ghcr.io/" when the registry was named in the path.
	prefix string
	// ns is containerd's ?ns= value, carried into realms and links.
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
	// along, which escapes to the heap (the token endpoint's closures
	// hold it, as do the pull's copies for shared work, whose record is
	// cleared): a pooled record spares every request that allocation.
	// Nothing records an outcome once the response is written (work that
	// outlives a request has no ResponseWriter), so the record is free
	// again when serve returns.
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
		if p.Accounts != nil {
			// A private site tells no one who has not logged in which
			// registries it serves, nor where they are.
			WriteError(w, &Error{Status: http.StatusNotFound, Code: CodeNameUnknown, Message: "no registry is served at this host name"})
			return
		}
		p.writeRoutes(w)
		return
	}
	if r.URL.Path == "/" || r.URL.Path == "" {
		if p.Page != nil && (r.Method == http.MethodGet || r.Method == http.MethodHead) && p.Page(w, r) {
			return
		}
		http.Redirect(w, r, "/v2/", http.StatusMovedPermanently)
		return
	}
	t.outcome = res
	res.Upstream = t.up.Name

	// 2. Validate before anything goes upstream.
	apiPath := r.URL.Path
	if t.prefix != "/v2/" { // the registry named in the path is routing, not name
		apiPath = "/v2/" + strings.TrimPrefix(apiPath, t.prefix)
	}
	path, perr := ParsePath(r.Method, apiPath)
	if perr != nil {
		WriteError(w, perr)
		return
	}
	res.Kind, res.Repository = path.Kind, path.Name

	// 3. Docker Hub has official images under library/.
	if t.up.IsDockerHub() && path.Name != "" && !strings.Contains(path.Name, "/") {
		p.redirectToLibrary(w, r, t, path)
		return
	}

	// 4. Authentication: the proxy's token endpoint, then the caller's grant.
	if path.Kind == KindAuth {
		p.serveToken(w, r, t)
		return
	}
	grant, err := p.Auth.Identify(r, t.up.String())
	if err != nil {
		p.writeChallenge(w, r, t, path, "invalid_token")
		return
	}
	if p.Accounts != nil && !p.accountOf(r, grant) {
		p.writeAccountChallenge(w, r, t, path)
		return
	}
	if path.Kind == KindBase {
		p.serveBase(w, r, t)
		return
	}
	if rerr := p.Rules.Refuse(t.up, path.Name); rerr != nil {
		WriteError(w, rerr)
		return
	}

	// 5. The cache, then the upstream.
	c := pull{p: p, w: w, r: r, t: t, path: path, grant: grant}
	switch path.Kind {
	case KindManifest:
		c.serveManifest()
	case KindBlob:
		c.serveBlob()
	default: // tags/list, referrers: from the upstream, kept for when it fails
		c.serveList()
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

func (p *Proxy) redirectToLibrary(w http.ResponseWriter, r *http.Request, t target, req APIPath) {
	rest := strings.TrimPrefix(r.URL.Path, t.prefix+req.Name)
	loc := t.prefix + "library/" + req.Name + rest
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusMovedPermanently)
}
