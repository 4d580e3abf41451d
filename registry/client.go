package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// Client does requests to upstream registries on behalf of an identity:
// the client's own (a grant carrying its upstream Authorization) or the
// proxy's (anonymous, or the configured credentials for that upstream).
type Client struct {
	// HTTP must not follow redirects (CheckRedirect returning
	// http.ErrUseLastResponse): blob redirects are followed here, without
	// credentials.
	HTTP *http.Client
	// Tokens fetches and caches upstream tokens.
	Tokens *tokenauth.Fetcher
	// Credentials are the proxy's own identity per upstream name.
	Credentials map[string]*tokenauth.Credentials
	// UserAgent is sent upstream, followed by the client's own.
	UserAgent string

	mu         sync.Mutex
	challenges map[string]learntChallenge // by upstream base URL
}

type learntChallenge struct {
	ch      *tokenauth.Challenge // nil: the upstream needs no auth
	learned time.Time
}

// challengeTTL is how long an upstream's challenge (its token realm and
// service) is trusted before /v2/ is asked again.
const challengeTTL = 10 * time.Minute

// maxRedirects bounds the redirects followed for one blob.
const maxRedirects = 5

// Challenge returns the upstream's authentication challenge, learnt from
// its answer to GET /v2/ (nil if it needs no authentication). The realm
// comes from the upstream only, never from a client's request.
func (c *Client) Challenge(ctx context.Context, up Upstream) (*tokenauth.Challenge, error) {
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
	resp, err := c.HTTP.Do(req)
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
	// followRedirects makes 3xx answers be followed with a clean request:
	// only Range and User-Agent, never Authorization.
	followRedirects bool
}

// Do sends o to up as grant's identity and returns the final response.
func (c *Client) Do(ctx context.Context, up Upstream, grant tokenauth.Grant, o outbound) (*http.Response, error) {
	req, err := c.newRequest(ctx, up, o)
	if err != nil {
		return nil, err
	}
	var resp *http.Response
	if !grant.Anonymous() {
		req.Header.Set("Authorization", grant.Authorization)
		resp, err = c.HTTP.Do(req)
	} else {
		resp, err = c.doAsProxy(ctx, up, req, o)
	}
	if err != nil {
		return nil, err
	}
	if o.followRedirects {
		return c.follow(ctx, resp, o)
	}
	return resp, nil
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
		if err := c.authorize(ctx, req, ch, scopes, creds); err == nil {
			resp, err := c.HTTP.Do(req)
			if err != nil || resp.StatusCode != http.StatusUnauthorized {
				return resp, err
			}
			// The token was refused (revoked, or the realm changed):
			// forget it and start over from the upstream's 401.
			c.Tokens.Forget(*ch, scopes, creds)
			return c.retryWithChallenge(ctx, up, req, resp, o, creds)
		}
	}
	resp, err := c.HTTP.Do(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	return c.retryWithChallenge(ctx, up, req, resp, o, creds)
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
	return c.HTTP.Do(retry)
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

// follow follows redirects (Docker Hub sends blobs to a signed CDN URL)
// with clean requests: the signature in the URL is the authorization, and
// neither our credentials nor the client's headers go to that host.
func (c *Client) follow(ctx context.Context, resp *http.Response, o outbound) (*http.Response, error) {
	for i := 0; ; i++ {
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
			http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			return resp, nil
		}
		loc, err := resp.Location()
		drain(resp.Body)
		if err != nil {
			return nil, fmt.Errorf("upstream redirect without a usable Location: %v", err)
		}
		if i == maxRedirects {
			return nil, fmt.Errorf("upstream redirected more than %d times", maxRedirects)
		}
		if loc.Scheme != "https" && loc.Scheme != "http" {
			return nil, fmt.Errorf("upstream redirected to a %q URL", loc.Scheme)
		}
		method := o.method
		if method != http.MethodHead {
			method = http.MethodGet
		}
		req, err := http.NewRequestWithContext(ctx, method, loc.String(), nil)
		if err != nil {
			return nil, err
		}
		if r := o.header.Get("Range"); r != "" {
			req.Header.Set("Range", r)
		}
		req.Header.Set("User-Agent", c.UserAgent)
		req.Header.Set("Accept-Encoding", "identity")
		resp, err = c.HTTP.Do(req)
		if err != nil {
			return nil, fmt.Errorf("following upstream redirect to %s: %w", redactURL(loc), err)
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.URL.JoinPath("/v2/").String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", authorization)
	req.Header.Set("User-Agent", c.UserAgent)
	resp, err := c.HTTP.Do(req)
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
