package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/netguard"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// Client does requests to upstream registries on behalf of an identity:
// the client's own (a grant carrying its upstream Authorization) or the
// proxy's (anonymous, or the configured credentials for that upstream).
type Client struct {
	// HTTP must not follow redirects (CheckRedirect returning
	// http.ErrUseLastResponse): redirects are followed here, without
	// credentials.
	HTTP *http.Client
	// Tokens fetches and caches upstream tokens.
	Tokens *tokenauth.Fetcher
	// Credentials are the proxy's own identity per upstream name.
	Credentials map[string]*tokenauth.Credentials
	// UserAgent is sent upstream, followed by the client's own.
	UserAgent string
	// Policy gives the netguard policy of the requests made on behalf of
	// an upstream: whether its redirects and token realms may lead to
	// internal addresses. Nil: UpstreamPolicy, from where the upstream's
	// configured host is. Tests that serve everything on loopback set it
	// to declare an upstream public.
	Policy func(ctx context.Context, up Upstream) netguard.Policy
	// Logger, if set, hears when an upstream goes down, comes back or
	// asks to wait (upstreamstate.go).
	Logger *zap.Logger
	// Now is the clock of pauses and outages; nil is time.Now. Tests set
	// it to move time forward without waiting.
	Now func() time.Time

	// state pauses an identity that the upstream rate-limits and fails
	// fast while the upstream cannot be reached (upstreamstate.go).
	state upstreamState

	mu         sync.Mutex
	challenges map[string]learntChallenge // by upstream base URL
	policies   map[string]learntPolicy    // by upstream base URL

	guardOnce sync.Once
	guarded   *http.Client // HTTP with a netguard transport
}

type learntPolicy struct {
	p       netguard.Policy
	learned time.Time
}

type learntChallenge struct {
	ch      *tokenauth.Challenge // nil: the upstream needs no auth
	learned time.Time
}

// challengeTTL is how long an upstream's challenge (its token realm and
// service) is trusted before /v2/ is asked again.
const challengeTTL = 10 * time.Minute

// maxRedirects bounds the redirects followed for one request.
const maxRedirects = 5

// Challenge returns the upstream's authentication challenge, learnt from
// its answer to GET /v2/ (nil if it needs no authentication). The realm
// comes from the upstream only, never from a client's request.
func (c *Client) Challenge(ctx context.Context, up Upstream) (*tokenauth.Challenge, error) {
	ctx = c.guard(c.observing(ctx, up, tokenauth.Grant{}, KindBase), up)
	key := up.String()
	c.mu.Lock()
	lc, ok := c.challenges[key]
	c.mu.Unlock()
	if ok && time.Since(lc.learned) < challengeTTL {
		return lc.ch, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.URL.JoinPath("/v2/").String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", c.UserAgent)
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	// An upstream that sends everything elsewhere (registry.k8s.io) may
	// send /v2/ too. What the redirect target asks for is its own
	// business: followed like any request, it either answers or fails,
	// and its realm is never taken for the upstream's.
	resp, err = c.follow(ctx, resp, outbound{method: http.MethodGet, kind: KindBase})
	if err != nil {
		return nil, err
	}
	drain(resp.Body)
	var ch *tokenauth.Challenge
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		ch = pickChallenge(resp.Header)
		if ch == nil {
			return nil, fmt.Errorf("upstream %s answered 401 without a usable challenge", up.Name)
		}
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		// Open registry.
	default:
		return nil, &upstreamStatusError{status: resp.StatusCode}
	}
	c.learn(up, ch)
	return ch, nil
}

func (c *Client) learn(up Upstream, ch *tokenauth.Challenge) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.challenges == nil {
		c.challenges = map[string]learntChallenge{}
	}
	c.challenges[up.String()] = learntChallenge{ch: ch, learned: time.Now()}
}

func (c *Client) learnt(up Upstream) *tokenauth.Challenge {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.challenges[up.String()].ch
}

// pickChallenge returns the Bearer challenge of a 401, or else the Basic one.
func pickChallenge(h http.Header) *tokenauth.Challenge {
	var basic *tokenauth.Challenge
	for _, ch := range tokenauth.ParseChallenges(h.Values("Www-Authenticate")) {
		ch := ch
		if ch.IsBearer() && ch.Realm() != "" {
			return &ch
		}
		if ch.IsBasic() && basic == nil {
			basic = &ch
		}
	}
	return basic
}

type upstreamStatusError struct{ status int }

func (e *upstreamStatusError) Error() string { return fmt.Sprintf("upstream answered %d", e.status) }

// outbound describes one upstream request.
type outbound struct {
	method string
	path   string // /v2/... on the upstream, with query if any
	header http.Header
	// scope is the token scope the request needs (repository:name:pull).
	scope string
	// kind is what the request asks for, which names the error a
	// redirect target's refusal becomes.
	kind Kind
	// returnRedirect returns the upstream's 3xx instead of following it.
	returnRedirect bool
}

// Do sends o to up as grant's identity and returns the final response.
// While the upstream pauses that identity or cannot be reached, nothing is
// sent and the error says so at once (upstreamstate.go).
func (c *Client) Do(ctx context.Context, up Upstream, grant tokenauth.Grant, o outbound) (*http.Response, error) {
	identity := requestIdentity(grant)
	// Docker Hub's pull quota counts manifest GETs, nothing else.
	counted := o.kind == KindManifest && o.method == http.MethodGet
	probe, err := c.state.admit(up, identity, counted, c.now())
	if err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, up, grant, o)
	c.state.learn(ctx, up, identity, probe, c.now(), resp, err, c.logger())
	return resp, err
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) logger() *zap.Logger {
	if c.Logger == nil {
		return zap.NewNop()
	}
	return c.Logger
}

func (c *Client) do(ctx context.Context, up Upstream, grant tokenauth.Grant, o outbound) (*http.Response, error) {
	ctx = c.guard(c.observing(ctx, up, grant, o.kind), up)
	req, err := c.newRequest(ctx, up, o)
	if err != nil {
		return nil, err
	}
	var resp *http.Response
	if !grant.Anonymous() {
		req.Header.Set("Authorization", grant.Authorization)
		resp, err = c.send(req)
	} else {
		resp, err = c.doAsProxy(ctx, up, req, o)
	}
	if err != nil {
		return nil, err
	}
	if o.returnRedirect {
		return resp, nil
	}
	return c.follow(ctx, resp, o)
}

func (c *Client) newRequest(ctx context.Context, up Upstream, o outbound) (*http.Request, error) {
	u := *up.URL
	path, query, _ := strings.Cut(o.path, "?")
	u.Path = path
	u.RawQuery = query
	req, err := http.NewRequestWithContext(ctx, o.method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	for k, vs := range o.header {
		req.Header[k] = vs
	}
	req.Header.Set("User-Agent", strings.TrimSpace(c.UserAgent+" "+o.header.Get("User-Agent")))
	// Bytes as the registry stores them: a transport's transparent gzip
	// would hand the cache decompressed bytes that match no digest.
	req.Header.Set("Accept-Encoding", "identity")
	return req, nil
}

// doAsProxy sends req with the proxy's identity: a cached token for the
// scope if the upstream is known to want one, else anonymously first, and
// on a Bearer 401 a token from the realm the upstream names, then once more.
func (c *Client) doAsProxy(ctx context.Context, up Upstream, req *http.Request, o outbound) (*http.Response, error) {
	creds := c.Credentials[up.Name]
	scopes := []string{o.scope}
	if ch := c.learnt(up); ch != nil && o.scope != "" {
		if resp, sent, err := c.sendWithToken(ctx, req, ch, scopes, creds); sent {
			if err != nil || resp.StatusCode != http.StatusUnauthorized {
				return resp, err
			}
			// The token was refused (revoked, or the realm changed):
			// forget it and start over from the upstream's 401.
			c.Tokens.Forget(*ch, scopes, creds)
			return c.retryWithChallenge(ctx, up, req, resp, o, creds)
		}
	}
	resp, err := c.send(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	return c.retryWithChallenge(ctx, up, req, resp, o, creds)
}

// sendWithToken sends req with the proxy's token for ch and scopes. A
// Bearer token may be one lent from another repository of the same realm
// (tokenauth.Fetcher.FetchShared): if the upstream refuses it, that is
// reported and req goes once more with the repository's own token. sent is
// false when no token could be had, and req was not sent.
func (c *Client) sendWithToken(ctx context.Context, req *http.Request, ch *tokenauth.Challenge, scopes []string, creds *tokenauth.Credentials) (_ *http.Response, sent bool, _ error) {
	if !ch.IsBearer() {
		if err := c.authorize(ctx, req, ch, scopes, creds); err != nil {
			return nil, false, nil
		}
		resp, err := c.send(req)
		return resp, true, err
	}
	tok, lent, err := c.Tokens.FetchShared(ctx, *ch, scopes, creds)
	if err != nil {
		return nil, false, nil
	}
	req.Header.Set("Authorization", "Bearer "+tok.Value)
	resp, err := c.send(req)
	if err != nil || !lent {
		return resp, true, err
	}
	// Some registries answer 403 rather than 401 to a token for another
	// repository: both mean "not this token", and the repository's own
	// token gets the real answer.
	refused := resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden
	c.Tokens.Lent(*ch, creds, !refused)
	if !refused {
		return resp, true, nil
	}
	drain(resp.Body)
	retry := req.Clone(ctx)
	if err := c.authorize(ctx, retry, ch, scopes, creds); err != nil {
		retry.Header.Del("Authorization")
		resp, err := c.send(retry)
		return resp, true, err
	}
	resp, err = c.send(retry)
	return resp, true, err
}

func (c *Client) retryWithChallenge(ctx context.Context, up Upstream, req *http.Request, resp *http.Response, o outbound, creds *tokenauth.Credentials) (*http.Response, error) {
	ch := pickChallenge(resp.Header)
	if ch == nil {
		return resp, nil
	}
	c.learn(up, &tokenauth.Challenge{Scheme: ch.Scheme, Params: map[string]string{"realm": ch.Realm(), "service": ch.Service()}})
	scopes := []string{o.scope}
	if s := ch.Params["scope"]; s != "" && o.scope == "" {
		scopes = strings.Fields(s)
	}
	if err := c.authorize(ctx, req, ch, scopes, creds); err != nil {
		if refused := (*netguard.RefusedError)(nil); errors.As(err, &refused) {
			drain(resp.Body)
			return nil, fmt.Errorf("upstream %s names token realm %s: %w", up.Name, ch.Realm(), err)
		}
		if errors.Is(err, tokenauth.ErrRefused) {
			// The configured credentials are wrong: say so rather
			// than hand the client a 401 it can do nothing about.
			drain(resp.Body)
			return nil, fmt.Errorf("upstream %s refused the configured credentials: %w", up.Name, err)
		}
		// Token service down: the 401 is the best answer we have.
		return resp, nil
	}
	drain(resp.Body)
	retry := req.Clone(ctx)
	return c.send(retry)
}

// authorize sets req's Authorization for the proxy's identity.
func (c *Client) authorize(ctx context.Context, req *http.Request, ch *tokenauth.Challenge, scopes []string, creds *tokenauth.Credentials) error {
	switch {
	case ch.IsBearer():
		tok, err := c.Tokens.Fetch(ctx, *ch, scopes, creds)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+tok.Value)
	case ch.IsBasic() && creds != nil:
		req.SetBasicAuth(creds.Username, creds.Secret)
	default:
		return fmt.Errorf("cannot answer a %s challenge", ch.Scheme)
	}
	return nil
}

// follow follows an upstream's redirects: Docker Hub sends blobs to a
// signed CDN URL, registry.k8s.io sends every request to a regional
// Artifact Registry host. Each hop is a clean request: the URL (its
// signature) or the target's own anonymous token is the authorization, and
// neither our credentials, the client's, nor client headers other than
// Accept and Range go to that host. A redirect target's failure comes back
// as a registry error response, not in the form that host chose (S3's
// XML, an HTML page).
func (c *Client) follow(ctx context.Context, resp *http.Response, o outbound) (*http.Response, error) {
	if !isRedirect(resp.StatusCode) {
		return resp, nil
	}
	visited := map[string]bool{resp.Request.URL.String(): true}
	// A redirect within the upstream's own host (a path it moved) carries
	// the request's Authorization: it goes to the upstream and nowhere else.
	origin := resp.Request.URL
	originAuth := resp.Request.Header.Get("Authorization")
	// The digest a redirect named, for a blob whose target (a CDN)
	// names none.
	var named string
	for hops := 0; isRedirect(resp.StatusCode); hops++ {
		if d := resp.Header.Get("Docker-Content-Digest"); d != "" {
			named = d
		}
		loc, err := resp.Location()
		drain(resp.Body)
		switch {
		case err != nil:
			// Not err itself: it quotes the URL, signature and all.
			return nil, &redirectError{reason: "without a usable Location"}
		case loc.Scheme != "https" && loc.Scheme != "http":
			return nil, &redirectError{reason: fmt.Sprintf("to a %q URL", loc.Scheme)}
		case visited[loc.String()]:
			return nil, &redirectError{reason: "in a loop"}
		case hops == maxRedirects:
			return nil, &redirectError{reason: fmt.Sprintf("more than %d times", maxRedirects)}
		}
		visited[loc.String()] = true
		auth := ""
		if loc.Scheme == origin.Scheme && loc.Host == origin.Host {
			auth = originAuth
		}
		if resp, err = c.hop(ctx, loc, o, auth); err != nil {
			return nil, err
		}
	}
	if resp.StatusCode >= 400 {
		return targetFailure(resp, o.kind), nil
	}
	if o.kind == KindBlob && named != "" && resp.Header.Get("Docker-Content-Digest") == "" {
		resp.Header.Set("Docker-Content-Digest", named)
	}
	linksAtUpstream(resp, o)
	return resp, nil
}

func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// redirectError is an upstream redirect the proxy cannot follow.
type redirectError struct{ reason string }

func (e *redirectError) Error() string { return "upstream redirected " + e.reason }

// hop requests one redirect target, with authorization only when the
// target is the upstream's own host. Another host that challenges for a
// Bearer token (a registry, such as Artifact Registry) gets one anonymous
// token from the realm it names, for the scope it names, and the request is
// sent once more: never with our credentials or the client's.
func (c *Client) hop(ctx context.Context, loc *url.URL, o outbound, authorization string) (*http.Response, error) {
	send := func(authorization string) (*http.Response, error) {
		method := o.method
		if method != http.MethodHead {
			method = http.MethodGet
		}
		req, err := http.NewRequestWithContext(ctx, method, loc.String(), nil)
		if err != nil {
			return nil, &redirectError{reason: "to an unusable URL"}
		}
		for _, k := range []string{"Accept", "Range"} {
			if v := o.header.Get(k); v != "" {
				req.Header.Set(k, v)
			}
		}
		req.Header.Set("User-Agent", c.UserAgent)
		req.Header.Set("Accept-Encoding", "identity")
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		resp, err := c.send(req)
		if err != nil {
			return nil, withoutQuery(loc, err)
		}
		return resp, nil
	}
	resp, err := send(authorization)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || authorization != "" {
		return resp, err
	}
	ch := pickChallenge(resp.Header)
	if ch == nil || !ch.IsBearer() {
		return resp, nil
	}
	realm := tokenauth.Challenge{Scheme: ch.Scheme, Params: map[string]string{"realm": ch.Realm(), "service": ch.Service()}}
	scopes := strings.Fields(ch.Params["scope"])
	tok, err := c.Tokens.Fetch(ctx, realm, scopes, nil)
	if refused := (*netguard.RefusedError)(nil); errors.As(err, &refused) {
		drain(resp.Body)
		return nil, fmt.Errorf("upstream redirect target %s names token realm %s: %w", loc.Host, realm.Realm(), err)
	}
	if err != nil {
		return resp, nil // the 401 stands
	}
	drain(resp.Body)
	resp, err = send("Bearer " + tok.Value)
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		c.Tokens.Forget(realm, scopes, nil)
	}
	return resp, err
}

// send does one HTTP request. net/http parses a redirect's Location before
// CheckRedirect can stop it, and when that fails its error quotes the
// Location, signature and all: that error becomes a redirectError.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	c.guardOnce.Do(func() { c.guarded = netguard.WrapClient(c.HTTP) })
	resp, err := c.guarded.Do(req)
	if err != nil && strings.Contains(err.Error(), "failed to parse Location header") {
		return nil, &redirectError{reason: "without a usable Location"}
	}
	return resp, err
}

// withoutQuery is a request error without the URL's query: net/http's
// *url.Error quotes the whole URL, and a redirect's query is often its
// signature, which must not reach a log.
func withoutQuery(loc *url.URL, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("following upstream redirect to %s: %w", redactURL(loc), err)
}

// targetFailure turns a redirect target's error answer into the registry
// error the client gets: not found is not found; anything else is the
// upstream's failure (a refused or expired signature, a broken CDN), which
// no credentials of the client's can fix.
func targetFailure(resp *http.Response, kind Kind) *http.Response {
	status := resp.StatusCode
	drain(resp.Body)
	e := &Error{Status: http.StatusBadGateway, Code: CodeUnavailable,
		Message: fmt.Sprintf("the upstream registry redirected to a host that answered %d", status)}
	switch status {
	case http.StatusNotFound, http.StatusGone:
		e.Status, e.Code = http.StatusNotFound, unknownCode(kind)
		e.Message = "not found where the upstream registry redirected to"
	case http.StatusTooManyRequests:
		e.Status, e.Code = status, CodeTooManyRequests
	case http.StatusServiceUnavailable:
		e.Status = status
	case http.StatusRequestedRangeNotSatisfiable:
		e.Status, e.Code = status, CodeRangeInvalid
	}
	out := e.response()
	for _, k := range []string{"Retry-After", "Content-Range"} {
		if v := resp.Header.Get(k); v != "" && status == e.Status {
			out.Header.Set(k, v)
		}
	}
	return out
}

// unknownCode is the registry error code for "not found" of a kind.
func unknownCode(kind Kind) string {
	switch kind {
	case KindBlob:
		return CodeBlobUnknown
	case KindManifest, KindReferrers:
		return CodeManifestUnknown
	}
	return CodeNameUnknown
}

// linksAtUpstream makes a redirect target's pagination links name the
// upstream's path for the same list (with the target's query): the proxy
// relays links in its own form, and the target's path (Artifact
// Registry's /v2/k8s-artifacts-prod/images/<name>/tags/list) is not one it
// routes. Links elsewhere are dropped for the same reason.
func linksAtUpstream(resp *http.Response, o outbound) {
	links := resp.Header.Values("Link")
	if len(links) == 0 {
		return
	}
	resp.Header.Del("Link")
	at := resp.Request.URL
	path, _, _ := strings.Cut(o.path, "?")
	for _, l := range links {
		l, ok := withLinkURI(l, func(ref string) (string, bool) {
			u, err := at.Parse(ref)
			if err != nil || u.Host != at.Host || u.Path != at.Path {
				return "", false
			}
			rel := url.URL{Path: path, RawQuery: u.RawQuery}
			return rel.String(), true
		})
		if ok {
			resp.Header.Add("Link", l)
		}
	}
}

// redactURL drops the query (signatures) of a URL for error messages.
func redactURL(u *url.URL) string {
	return u.Scheme + "://" + u.Host + u.Path
}

// drain reads a little of a body we do not use, so the connection can be
// reused, and closes it.
func drain(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 64<<10)
	_ = body.Close()
}

// CheckBasic asks the upstream whether it accepts a Basic Authorization
// value (for registries that challenge with Basic rather than tokens).
func (c *Client) CheckBasic(ctx context.Context, up Upstream, authorization string) error {
	ctx = c.guard(c.observing(ctx, up, tokenauth.Grant{Authorization: authorization}, KindBase), up)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.URL.JoinPath("/v2/").String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", authorization)
	req.Header.Set("User-Agent", c.UserAgent)
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	drain(resp.Body)
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return tokenauth.ErrRefused
	case resp.StatusCode >= 300:
		return &upstreamStatusError{status: resp.StatusCode}
	}
	return nil
}

// guard returns ctx carrying the netguard policy of up: requests made with
// it to any host but the upstream's own (redirect targets, token realms)
// are refused on internal addresses unless the upstream is on one.
func (c *Client) guard(ctx context.Context, up Upstream) context.Context {
	var p netguard.Policy
	if c.Policy != nil {
		p = c.Policy(ctx, up)
	} else {
		p = c.upstreamPolicy(ctx, up)
	}
	return netguard.WithPolicy(ctx, p)
}

// upstreamPolicy is UpstreamPolicy, remembered for challengeTTL: the
// upstream's addresses change rarely, and a lookup per request would cost
// more than the request.
func (c *Client) upstreamPolicy(ctx context.Context, up Upstream) netguard.Policy {
	key := up.String()
	c.mu.Lock()
	lp, ok := c.policies[key]
	c.mu.Unlock()
	if ok && time.Since(lp.learned) < challengeTTL {
		return lp.p
	}
	p, err := UpstreamPolicy(ctx, up, net.DefaultResolver)
	if err != nil {
		// Not remembered: the next request asks again. Meanwhile the
		// upstream counts as public, the safe side.
		return p
	}
	c.mu.Lock()
	if c.policies == nil {
		c.policies = map[string]learntPolicy{}
	}
	c.policies[key] = learntPolicy{p: p, learned: time.Now()}
	c.mu.Unlock()
	return p
}

// UpstreamPolicy is the netguard policy of up as configured: it is on an
// internal address (and its redirects and realms may be too) when its host
// is an internal IP literal, or a name that resolves to at least one
// internal address. A private registry at registry.lan or 10.0.0.5 goes on
// working; a public one cannot send the proxy to the proxy's own network.
// When the name does not resolve, the upstream counts as public and the
// error says why.
func UpstreamPolicy(ctx context.Context, up Upstream, r netguard.Resolver) (netguard.Policy, error) {
	p := netguard.Policy{Home: netguard.HostPort(up.URL)}
	host := up.URL.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		p.AllowInternal = netguard.Internal(a)
		return p, nil
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return p, err
	}
	p.AllowInternal = slices.ContainsFunc(addrs, netguard.Internal)
	return p, nil
}
