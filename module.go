// Package dockerproxy is a Caddy v2 HTTP handler, http.handlers.docker_proxy,
// that turns a Caddy site into a pull-through cache for container registries
// (Docker Hub, ghcr.io, quay.io, gcr.io, registry.k8s.io, public.ecr.aws, ...).
//
// Caddy supplies TLS, HTTP/2, site blocks, logging and reloads; the registry
// knowledge lives in package registry, authentication in tokenauth and the
// cache in blobcache (with its S3-compatible shared tier in
// blobcache/s3remote). This file only adapts them to Caddy.
package dockerproxy

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/blobcache/s3remote"
	"github.com/caddy-dockerproxy/dockerproxy/netguard"
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
	// keeps its rules (Docker Hub's library/ prefix).
	Upstreams map[string]string `json:"upstreams,omitempty"`

	// Fallback is the upstream for hosts that match no route. For
	// debugging only: in production an unknown host should get the route
	// list.
	Fallback string `json:"fallback,omitempty"`

	// Credentials the proxy uses for clients that bring none.
	Credentials []Credential `json:"credentials,omitempty"`

	// AuthKey seals the tokens that /v2/auth hands out. Every instance
	// behind one load balancer needs the same key. Default: a random key
	// kept in the cache directory.
	AuthKey string `json:"auth_key,omitempty"`

	// Cache configures the blob and manifest cache (on by default).
	Cache *CacheConfig `json:"cache,omitempty"`

	// TransportRaw is the upstream transport, an
	// http.reverse_proxy.transport module (default: http).
	TransportRaw json.RawMessage `json:"transport,omitempty" caddy:"namespace=http.reverse_proxy.transport inline_key=protocol"`

	proxy    *registry.Proxy
	cacheDir string       // the store this handler holds in the pool, if any
	shared   *sharedCache // that store
	// events is the events app of the config this handler belongs to: its
	// "started" event says that the config is the one serving. Nil when
	// the handler is provisioned outside a config with one.
	events   *caddyevents.App
	logger   *zap.Logger
	metrics  *metrics
	inFlight *inFlight
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.docker_proxy",
		New: func() caddy.Module { return new(Handler) },
	}
}

// stores holds one blobcache.Store per directory, shared by every handler
// that names it and kept across config reloads: a reload provisions the new
// handlers (taking a reference) before the old ones are cleaned up.
//
// Caddy provisions a new config while the old one serves, and may still
// reject it (a later module fails to provision or validate, an app fails
// to start); the running config must then go on exactly as before. So a
// config that finds its directory's store already open does not change the
// store's bound or shared tier while it is provisioned: it records them,
// and they are applied when Caddy reports the config started (all its apps
// running, just before the old config is stopped). A config that opens the
// store (the first one) gives them to the store at once.
var stores = caddy.NewUsagePool()

// sharedCache is what lives as long as a cache directory is in use: the
// store and what the upstream confirmed (credentials, client access), which
// the proxy needs to serve private content while the upstream is down.
type sharedCache struct {
	store    *blobcache.Store
	verdicts *tokenauth.Confirmations
	accepted *tokenauth.Confirmations

	mu        sync.Mutex
	remoteKey string // identifies the store's shared tier config ("" for none)
	// pending holds the settings of each config being loaded that found
	// the store open, keyed by that config's events app, until the config
	// has started (then they are applied) or is cleaned up (then dropped).
	pending map[*caddyevents.App]cacheSettings
}

func (s *sharedCache) Destruct() error { return s.store.Close() }

// cacheSettings are what a config sets on the store of a directory: the
// bound and the shared tier.
type cacheSettings struct {
	dir       string
	maxSize   int64
	remote    blobcache.Remote // nil: none
	remoteKey string           // identifies remote's config ("" for none)
}

// apply gives the store the settings: a lower bound evicts at once.
func (s *sharedCache) apply(c cacheSettings, logger *zap.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyLocked(c, logger)
}

func (s *sharedCache) applyLocked(c cacheSettings, logger *zap.Logger) {
	s.store.SetMaxSize(c.maxSize)
	if s.remoteKey != c.remoteKey {
		s.store.SetRemote(c.remote)
		s.remoteKey = c.remoteKey
		logger.Info("shared cache tier of the cache directory changed", zap.String("dir", c.dir), zap.Bool("enabled", c.remote != nil))
	}
}

// applyWhenStarted records the settings of the config whose events app is
// events, to be applied when that config has started. Within one config,
// the handler provisioned last sets them, as the first config's do.
func (s *sharedCache) applyWhenStarted(events *caddyevents.App, c cacheSettings, logger *zap.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, subscribed := s.pending[events]; subscribed {
		s.pending[events] = c
		return
	}
	if err := events.On("started", configStarted{shared: s, events: events, logger: logger}); err != nil {
		// The events app has started, so has the config: it serves.
		s.applyLocked(c, logger)
		return
	}
	if s.pending == nil {
		s.pending = make(map[*caddyevents.App]cacheSettings)
	}
	s.pending[events] = c
}

// dropPending forgets the settings of a config that is cleaned up. Those
// of a config that started are applied and gone already; those of one
// that never started must never reach the store.
func (s *sharedCache) dropPending(events *caddyevents.App) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, events)
}

// configStarted applies a config's pending settings when Caddy reports
// that config started: every app of it runs, and it replaces the running
// config.
type configStarted struct {
	shared *sharedCache
	events *caddyevents.App
	logger *zap.Logger
}

func (h configStarted) Handle(context.Context, caddy.Event) error {
	s := h.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.pending[h.events]; ok {
		delete(s.pending, h.events)
		s.applyLocked(c, h.logger)
	}
	return nil
}

// offlineWindow is how long what the upstream confirmed stays usable
// while it cannot be asked.
const offlineWindow = 24 * time.Hour

// defaultTagTTL is how long a tag is served from the cache unasked.
const defaultTagTTL = 5 * time.Minute

// Provision sets the handler up: routes, upstream client, credentials,
// token sealing key and the shared cache.
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
	m, err := registerMetrics(ctx.GetMetricsRegistry())
	if err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	h.metrics = m

	router, err := registry.NewRouter(h.routerConfig())
	if err != nil {
		return err
	}

	transport, err := h.loadTransport(ctx)
	if err != nil {
		return err
	}
	const userAgent = "docker_proxy"
	tokens := &tokenauth.Fetcher{Client: &http.Client{Transport: transport}, UserAgent: userAgent}
	upstreamClient := &registry.Client{
		HTTP: &http.Client{
			Transport:     transport,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		Tokens:      tokens,
		Credentials: map[string]*tokenauth.Credentials{},
		UserAgent:   userAgent,
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

	h.proxy = &registry.Proxy{
		Router:   router,
		Upstream: upstreamClient,
		Auth:     &tokenauth.Endpoint{Sealer: sealer, Fetcher: tokens, Accepted: accepted, OfflineWindow: offlineWindow, Logger: h.logger},
		Cache:    cache,
		Logger:   h.logger,
		Scheme:   clientScheme,

		OnFillFailure: h.metrics.fillFailed,
	}
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

// Validate checks the configuration as the Caddyfile parser does, for
// configurations written in JSON (or changed through the admin API),
// which nothing has checked before.
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
	if c := h.Cache; c != nil {
		if c.MaxSize < 0 {
			return fmt.Errorf("cache: max_size %d is negative", c.MaxSize)
		}
		if c.TagTTL < 0 {
			return fmt.Errorf("cache: tag_ttl %s is negative", time.Duration(c.TagTTL))
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

// check checks a shared tier config as the Caddyfile does: endpoint and
// bucket given, both keys or neither, endpoint and bucket valid unless
// they hold placeholders (checked again once expanded).
func (c *S3Config) check() error {
	switch {
	case c.Endpoint == "":
		return errors.New("s3: endpoint is required")
	case c.Bucket == "":
		return errors.New("s3: bucket is required")
	case (c.AccessKey == "") != (c.SecretKey == ""):
		return errors.New("s3: " + s3remote.KeysRule)
	}
	if !hasPlaceholder(c.Endpoint) {
		if err := s3remote.CheckEndpoint(c.Endpoint); err != nil {
			return err
		}
	}
	if !hasPlaceholder(c.Bucket) {
		if err := s3remote.CheckBucket(c.Bucket); err != nil {
			return err
		}
	}
	return nil
}

// hasPlaceholder reports whether a config value holds a placeholder, to
// be checked once expanded at provision time.
func hasPlaceholder(v string) bool { return strings.Contains(v, "{") }

// remoteKeyOf identifies an expanded shared tier config, secret included
// (hashed), so that a reload that changes any of it changes the store's.
func remoteKeyOf(c s3remote.Config) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{c.Endpoint, c.Bucket, c.Region, c.Prefix, c.AccessKey, c.SecretKey}, "\x00")))
	return hex.EncodeToString(sum[:])
}

// sharedRemote is a shared tier with the key of its config.
type sharedRemote struct {
	remote blobcache.Remote
	key    string
}

// sharedTier sets up the shared tier the cache config names (nil: none),
// its placeholders expanded. Errors name the field, never a key.
func (h *Handler) sharedTier(repl *caddy.Replacer) (*sharedRemote, error) {
	if h.Cache == nil || h.Cache.S3 == nil {
		return nil, nil
	}
	c := h.Cache.S3
	cfg := s3remote.Config{
		Endpoint:  repl.ReplaceKnown(c.Endpoint, ""),
		Bucket:    repl.ReplaceKnown(c.Bucket, ""),
		Region:    repl.ReplaceKnown(c.Region, ""),
		Prefix:    repl.ReplaceKnown(c.Prefix, ""),
		AccessKey: repl.ReplaceKnown(c.AccessKey, ""),
		SecretKey: repl.ReplaceKnown(c.SecretKey, ""),
	}
	for _, f := range []struct{ name, given, value string }{
		{"endpoint", c.Endpoint, cfg.Endpoint}, {"bucket", c.Bucket, cfg.Bucket},
		{"access_key", c.AccessKey, cfg.AccessKey}, {"secret_key", c.SecretKey, cfg.SecretKey},
	} {
		if f.given != "" && f.value == "" {
			return nil, fmt.Errorf("cache s3: %s is empty once placeholders are expanded (is its environment variable set?)", f.name)
		}
	}
	r, err := s3remote.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("cache %w", err)
	}
	h.logger.Info("shared cache tier", zap.String("endpoint", cfg.Endpoint), zap.String("bucket", cfg.Bucket),
		zap.String("prefix", cfg.Prefix))
	return &sharedRemote{remote: r, key: remoteKeyOf(cfg)}, nil
}

// loadTransport loads the configured reverse_proxy transport, or Caddy's
// HTTP transport with its defaults (keep-alive, HTTP/2).
func (h *Handler) loadTransport(ctx caddy.Context) (http.RoundTripper, error) {
	if h.TransportRaw != nil {
		mod, err := ctx.LoadModule(h, "TransportRaw")
		if err != nil {
			return nil, fmt.Errorf("loading transport: %v", err)
		}
		rt, ok := mod.(http.RoundTripper)
		if !ok {
			return nil, fmt.Errorf("transport module %T is not an http.RoundTripper", mod)
		}
		guardDial(rt)
		return rt, nil
	}
	ht := new(reverseproxy.HTTPTransport)
	if err := ht.Provision(ctx); err != nil {
		return nil, fmt.Errorf("provisioning transport: %v", err)
	}
	guardDial(ht)
	return ht, nil
}

// guardDial makes the transport's connections subject to the netguard
// policy of the request they are made for, so that a redirect target or
// realm whose name resolves to an internal address only when dialled is
// refused too. Other transports get the check before each request only
// (registry.Client and tokenauth.Fetcher do that whatever the transport).
func guardDial(rt http.RoundTripper) {
	ht, ok := rt.(*reverseproxy.HTTPTransport)
	if !ok || ht.Transport == nil {
		return
	}
	dial := ht.Transport.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	ht.Transport.DialContext = netguard.Dial(dial)
}

func (h *Handler) cacheDirectory() string {
	if h.Cache != nil && h.Cache.Dir != "" {
		return caddy.NewReplacer().ReplaceKnown(h.Cache.Dir, "")
	}
	return filepath.Join(caddy.AppDataDir(), "docker_proxy", "cache")
}

// provisionCache takes (or opens) the store of the cache directory, with
// remote as its shared tier (nil: none).
func (h *Handler) provisionCache(remote *sharedRemote) (*registry.Cache, *tokenauth.Confirmations, error) {
	dir, err := filepath.Abs(h.cacheDirectory())
	if err != nil {
		return nil, nil, fmt.Errorf("cache directory: %v", err)
	}
	var maxSize int64
	ttl := defaultTagTTL
	if h.Cache != nil {
		maxSize = h.Cache.MaxSize
		if h.Cache.TagTTL > 0 {
			ttl = time.Duration(h.Cache.TagTTL)
		}
	}
	var r blobcache.Remote
	var remoteKey string
	if remote != nil {
		r, remoteKey = remote.remote, remote.key
	}
	val, loaded, err := stores.LoadOrNew(dir, func() (caddy.Destructor, error) {
		s, err := blobcache.Open(blobcache.Options{Dir: dir, MaxSize: maxSize, Logger: h.logger.Named("cache"), Remote: r})
		if err != nil {
			return nil, err
		}
		return &sharedCache{
			store:     s,
			verdicts:  tokenauth.NewConfirmations(offlineWindow),
			accepted:  tokenauth.NewConfirmations(offlineWindow),
			remoteKey: remoteKey,
		}, nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("opening cache %s: %v", dir, err)
	}
	h.cacheDir = dir
	shared := val.(*sharedCache)
	h.shared = shared
	if loaded {
		// A reload (or another site naming the same directory): the
		// configuration loaded last sets the bound and the shared tier,
		// once it serves (see stores).
		settings := cacheSettings{dir: dir, maxSize: maxSize, remote: r, remoteKey: remoteKey}
		if h.events == nil {
			shared.apply(settings, h.logger)
		} else {
			shared.applyWhenStarted(h.events, settings, h.logger)
		}
	}
	return registry.NewCache(shared.store, ttl, shared.verdicts), shared.accepted, nil
}

// configEvents returns the events app of the config being provisioned
// (the http app loads it before its handlers), or nil.
func configEvents(ctx caddy.Context) *caddyevents.App {
	app, err := ctx.AppIfConfigured("events")
	if err != nil {
		return nil
	}
	events, _ := app.(*caddyevents.App)
	return events
}

// authKey returns the configured key, or a random one kept in Caddy's data
// directory, so that tokens outlive restarts and every instance sharing
// that directory accepts the others' tokens.
func (h *Handler) authKey(repl *caddy.Replacer) ([]byte, error) {
	if h.AuthKey != "" {
		return []byte(repl.ReplaceKnown(h.AuthKey, "")), nil
	}
	path := filepath.Join(caddy.AppDataDir(), "docker_proxy", "auth.key")
	if key, err := os.ReadFile(path); err == nil && len(key) >= 32 {
		return key, nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading auth key: %v", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("storing auth key: %v", err)
	}
	// Create exclusively: if another instance won the race, use its key.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("storing auth key: %v", err)
	}
	_, werr := f.Write(key)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("storing auth key: %v", werr)
	}
	return key, nil
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
	res := h.proxy.Serve(w, r)
	h.metrics.observe(res.Outcome)
	return nil
}

// Cleanup releases the handler's reference to the shared cache. Caddy
// cleans up an old config while the requests it accepted still run (a
// reload is graceful), so the reference goes when the last of them ends:
// a reload that moves the cache must not close the store under them.
//
// The config cleaned up may also be one that Caddy rejected: then the
// settings it meant for a store that the running config shares are
// dropped, never applied.
func (h *Handler) Cleanup() error {
	if h.shared != nil && h.events != nil {
		h.shared.dropPending(h.events)
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
