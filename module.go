package dockerproxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the docker_proxy HTTP handler.
type Handler struct {
	// Upstream is the registry this site proxies: a well-known name
	// (docker.io, ghcr.io, quay.io, ...) or a URL such as
	// http://127.0.0.1:5000. Hosts without a route of their own use it.
	Upstream string `json:"upstream,omitempty"`

	// Domain adds the host table of cloudflare-docker-proxy for the domain:
	// docker.<domain> and docker-staging.<domain> to Docker Hub,
	// ghcr.<domain> to ghcr.io, quay.<domain> to quay.io, and so on.
	Domain string `json:"domain,omitempty"`

	// Routes maps extra host names to upstreams (names or URLs).
	Routes map[string]string `json:"routes,omitempty"`

	// Upstreams points well-known upstream names at other URLs, for
	// example docker.io at a private mirror or a test registry. The name
	// still follows its rules (Docker Hub's library/ prefix).
	Upstreams map[string]string `json:"upstreams,omitempty"`

	// Fallback is the upstream for hosts that match no route. For
	// debugging only: in production an unknown host should get the route
	// list.
	Fallback string `json:"fallback,omitempty"`

	// Credentials the proxy uses for clients that bring none.
	Credentials []Credential `json:"credentials,omitempty"`

	// AuthKey seals the tokens that /v2/auth hands out. Every instance
	// behind one load balancer needs the same key. Default: a random key
	// stored once in Caddy's data directory (docker_proxy/auth.key).
	AuthKey string `json:"auth_key,omitempty"`

	// Users are the proxy's own accounts: with any, the site is private
	// and every client logs in with one (users.go).
	Users []User `json:"users,omitempty"`

	// Rules say which repositories of each upstream the site serves.
	Rules []registry.RuleConfig `json:"rules,omitempty"`

	// Cache configures the blob and manifest cache (on by default).
	Cache *CacheConfig `json:"cache,omitempty"`

	// TransportRaw is the upstream transport, an
	// http.reverse_proxy.transport module (default: http).
	TransportRaw json.RawMessage `json:"transport,omitempty" caddy:"namespace=http.reverse_proxy.transport inline_key=protocol"`

	// Page configures the page that browsers get at GET / (on by
	// default): turned off, or the operator's own template.
	Page *PageConfig `json:"page,omitempty"`

	// Prefetch pulls images into the cache on a schedule (prefetch.go).
	Prefetch *PrefetchConfig `json:"prefetch,omitempty"`

	proxy    *registry.Proxy
	cacheDir string    // the directory whose store this handler holds in the pool, if any
	dirCache *dirCache // that directory's store
	// events is the events app of the config this handler belongs to: its
	// "started" event says that the config is the one serving. Nil when
	// the handler is provisioned outside a config with one.
	events   *caddyevents.App
	logger   *zap.Logger
	metrics  *metrics
	inFlight *inFlight

	prefetch *prefetchSchedule // nil without a prefetch block
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.docker_proxy",
		New: func() caddy.Module { return new(Handler) },
	}
}

// defaultTagTTL is how long a tag is served from the cache unasked.
const defaultTagTTL = 5 * time.Minute

// Provision sets the handler up: routes, upstream client, credentials,
// token sealing key and the directory's store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	// Caddy validates a module only after provisioning it, and
	// provisioning reaches the store that the running config shares: a
	// wrong value (a negative max_size) must stop here, before anything
	// of the running config is touched.
	if err := h.Validate(); err != nil {
		return err
	}
	h.events = configEvents(ctx)
	h.inFlight = new(inFlight)
	repl := caddy.NewReplacer()

	router, err := registry.NewRouter(h.routerConfig())
	if err != nil {
		return err
	}
	m, err := registerMetrics(ctx.GetMetricsRegistry(), router.Names())
	if err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	h.metrics = m

	transport, err := h.loadTransport(ctx)
	if err != nil {
		return err
	}
	const userAgent = "docker_proxy"
	observer := upstreamObserver{c: h.metrics.c}
	tokens := &tokenauth.Fetcher{Client: &http.Client{Transport: registry.ObserveTransport(transport, observer, true)}, UserAgent: userAgent}
	upstreamClient := &registry.Client{
		HTTP: &http.Client{
			Transport:     registry.ObserveTransport(transport, observer, false),
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		Tokens:      tokens,
		Credentials: map[string]*tokenauth.Credentials{},
		UserAgent:   userAgent,
		Logger:      h.logger,
		Now:         clock,
	}
	for _, c := range h.Credentials {
		up, err := h.credentialsUpstream(c.Upstream)
		if err != nil {
			return fmt.Errorf("credentials: %w", err)
		}
		creds := &tokenauth.Credentials{
			Username: repl.ReplaceKnown(c.Username, ""),
			Secret:   repl.ReplaceKnown(c.Secret, ""),
		}
		// A placeholder of an unset variable expands to nothing, and
		// the proxy would log in as nobody: every pull would fail. The
		// error names the upstream, never what the secret holds.
		switch {
		case creds.Username == "":
			return fmt.Errorf("credentials for upstream %s: the username is empty once placeholders are expanded (is its environment variable set?)", up.Name)
		case creds.Secret == "":
			return fmt.Errorf("credentials for upstream %s: the secret is empty once placeholders are expanded (is its environment variable set?)", up.Name)
		}
		upstreamClient.Credentials[up.Name] = creds
	}

	accountChecker, err := h.accountChecker(repl)
	if err != nil {
		return err
	}
	rules, err := h.repositoryRules(router)
	if err != nil {
		return err
	}

	var cache *registry.Cache
	var accepted *tokenauth.Confirmations
	if h.Cache == nil || !h.Cache.Disabled {
		// A wrong shared tier config is the user's to fix, as wrong
		// credentials are: it fails provisioning.
		remote, err := h.sharedTier(repl)
		if err != nil {
			return err
		}
		cache, accepted, err = h.provisionCache(remote)
		if err != nil {
			// An unwritable or broken cache directory must not take the
			// registry down: serve from the upstream and say why.
			h.logger.Error("cache unavailable: serving every request from the upstream", zap.Error(err))
			cache = nil
		}
	}

	key, err := h.authKey(repl)
	if err != nil {
		return err
	}
	sealer, err := tokenauth.NewSealer(key)
	if err != nil {
		return fmt.Errorf("auth_key: %w", err)
	}

	page, err := h.provisionPage(repl, router)
	if err != nil {
		return err
	}

	h.proxy = &registry.Proxy{
		Router:   router,
		Upstream: upstreamClient,
		Auth:     &tokenauth.Endpoint{Sealer: sealer, Fetcher: tokens, Accepted: accepted, Logger: h.logger},
		Cache:    cache,
		Logger:   h.logger,
		Scheme:   clientScheme,

		OnFillFailure: h.metrics.fillFailed,
		OnFilled:      h.metrics.fillObserver(),
		Page:          page,

		Accounts:   accountChecker,
		Rules:      rules,
		ClientAddr: clientIP,
		OnAccount:  setUserID,
	}
	if err := h.provisionPrefetch(ctx); err != nil {
		return err
	}
	live.add(h)
	return nil
}

func (h *Handler) routerConfig() registry.RouterConfig {
	return registry.RouterConfig{
		Default:   h.Upstream,
		Domain:    h.Domain,
		Routes:    h.Routes,
		Overrides: h.Upstreams,
		Fallback:  h.Fallback,
	}
}

// errNoDefaultUpstream is the error of credentials that name no upstream
// in a handler that has no default one.
var errNoDefaultUpstream = errors.New("credentials without an upstream are for the default upstream, but there is none")

// credentialsUpstream is the upstream that credentials given for upstream
// (empty: the default upstream) are used towards.
func (h *Handler) credentialsUpstream(upstream string) (registry.Upstream, error) {
	if upstream == "" {
		if h.Upstream == "" {
			return registry.Upstream{}, errNoDefaultUpstream
		}
		upstream = h.Upstream
	}
	return registry.ParseUpstream(upstream, h.Upstreams)
}

// checkCredential checks credentials c for the upstream called name;
// given holds the upstreams that already have credentials, and gets name.
func checkCredential(c Credential, name string, given map[string]bool) error {
	if c.Username == "" || c.Secret == "" {
		return errors.New("credentials need a non-empty username and secret")
	}
	if given[name] {
		return fmt.Errorf("credentials for upstream '%s' already specified", name)
	}
	given[name] = true
	return nil
}

// Validate checks what can be checked before anything is set up: routes,
// credentials (one set per upstream, neither part empty), the cache's
// bounds and its S3 config (placeholders aside, checked once expanded).
// The Caddyfile parser makes the same checks with line numbers; this is
// for every config, JSON and admin API changes included. Provision calls
// it first, because Caddy validates a module only after provisioning it.
func (h *Handler) Validate() error {
	if err := h.routerConfig().Validate(); err != nil {
		return err
	}
	given := make(map[string]bool)
	for _, c := range h.Credentials {
		up, err := h.credentialsUpstream(c.Upstream)
		if err != nil {
			return fmt.Errorf("credentials: %w", err)
		}
		if err := checkCredential(c, up.Name, given); err != nil {
			return err
		}
	}
	if err := h.Page.check(); err != nil {
		return err
	}
	if err := h.validateGates(); err != nil {
		return err
	}
	if err := h.checkPrefetch(); err != nil {
		return err
	}
	if c := h.Cache; c != nil {
		if c.MaxSize < 0 {
			return fmt.Errorf("cache: max_size %d is negative", c.MaxSize)
		}
		if c.TagTTL < 0 {
			return fmt.Errorf("cache: tag_ttl %s is negative", time.Duration(c.TagTTL))
		}
		if c.NegativeTTL < 0 {
			return fmt.Errorf("cache: negative_ttl %s is negative", time.Duration(c.NegativeTTL))
		}
		if c.S3 != nil {
			if c.Disabled {
				return errors.New("cache: s3 is a tier of the cache, which is disabled")
			}
			if err := c.S3.check(); err != nil {
				return fmt.Errorf("cache: %w", err)
			}
		}
	}
	return nil
}

// clientScheme is the scheme the client used: TLS on this connection, or
// X-Forwarded-Proto from a proxy listed in the server's trusted_proxies.
func clientScheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	if trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool); trusted {
		switch p := r.Header.Get("X-Forwarded-Proto"); p {
		case "http", "https":
			return p
		}
	}
	return "http"
}

// ServeHTTP serves the registry API; it is a terminal handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	h.inFlight.begin()
	defer h.inFlight.end()
	if h.serveHealth(w, r) {
		return nil // a probe: not a registry response, not counted
	}
	h.serveObserved(w, r)
	return nil
}

// Cleanup releases the handler's reference to the directory's store. Caddy
// cleans up an old config while the requests it accepted still run (a
// reload is graceful), so the reference goes when the last of them ends:
// a reload that moves the cache must not close the store under them.
//
// The config cleaned up may also be one that Caddy rejected: then the
// settings it meant for a store that the running config shares are
// dropped, never applied.
func (h *Handler) Cleanup() error {
	live.remove(h)
	h.stopPrefetch()
	if h.dirCache != nil && h.events != nil {
		h.dirCache.dropPending(h.events)
	}
	if h.cacheDir == "" || h.inFlight == nil {
		return nil
	}
	dir, logger := h.cacheDir, h.logger
	h.inFlight.whenIdle(func() {
		if _, err := stores.Delete(dir); err != nil {
			logger.Error("closing cache", zap.String("dir", dir), zap.Error(err))
		}
	})
	return nil
}

// inFlight counts a handler's requests in progress.
type inFlight struct {
	mu     sync.Mutex
	n      int
	onIdle func()
}

func (f *inFlight) begin() {
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
}

func (f *inFlight) end() {
	f.mu.Lock()
	f.n--
	var run func()
	if f.n == 0 {
		run, f.onIdle = f.onIdle, nil
	}
	f.mu.Unlock()
	if run != nil {
		run()
	}
}

// whenIdle runs fn now if no request is in progress, else when the last
// one ends.
func (f *inFlight) whenIdle(fn func()) {
	f.mu.Lock()
	if f.n > 0 {
		f.onIdle = fn
		f.mu.Unlock()
		return
	}
	f.mu.Unlock()
	fn()
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
