package dockerproxy

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/registry"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// The cache pool: one store per cache directory, living across config
// reloads, and the settings a config waits to give it until it serves.

// stores holds one blobcache.Store per directory, the directory's store:
// every handler that names the directory uses it, and it lives across
// config reloads, because a reload provisions the new handlers (taking a
// reference) before the old ones are cleaned up.
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

// dirCache is what lives as long as a cache directory is in use: the
// directory's store and what the upstream confirmed (credentials, client access), which
// the proxy needs to serve private content while the upstream is down.
type dirCache struct {
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

func (s *dirCache) Destruct() error { return s.store.Close() }

// cacheSettings are what a config sets on the store of a directory: the
// bound and the shared tier.
type cacheSettings struct {
	dir       string
	maxSize   int64
	remote    blobcache.Remote // nil: none
	remoteKey string           // identifies remote's config ("" for none)
}

// apply gives the store the settings: a lower bound evicts at once.
func (s *dirCache) apply(c cacheSettings, logger *zap.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyLocked(c, logger)
}

func (s *dirCache) applyLocked(c cacheSettings, logger *zap.Logger) {
	s.store.SetMaxSize(c.maxSize)
	if s.remoteKey != c.remoteKey {
		s.store.SetRemote(c.remote)
		s.remoteKey = c.remoteKey
		logger.Info("shared tier of the cache directory changed", zap.String("dir", c.dir), zap.Bool("enabled", c.remote != nil))
	}
}

// applyWhenStarted records the settings of the config whose events app is
// events, to be applied when that config has started. Within one config,
// the handler provisioned last sets them, as the first config's do.
func (s *dirCache) applyWhenStarted(events *caddyevents.App, c cacheSettings, logger *zap.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, subscribed := s.pending[events]; subscribed {
		s.pending[events] = c
		return
	}
	if err := events.On("started", configStarted{cache: s, events: events, logger: logger}); err != nil {
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
func (s *dirCache) dropPending(events *caddyevents.App) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, events)
}

// configStarted applies a config's pending settings when Caddy reports
// that config started: every app of it runs, and it replaces the running
// config.
type configStarted struct {
	cache  *dirCache
	events *caddyevents.App
	logger *zap.Logger
}

func (h configStarted) Handle(context.Context, caddy.Event) error {
	s := h.cache
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.pending[h.events]; ok {
		delete(s.pending, h.events)
		s.applyLocked(c, h.logger)
	}
	return nil
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
		s, err := blobcache.Open(blobcache.Options{Dir: dir, MaxSize: maxSize, Logger: h.logger.Named("cache"), Remote: r, LoadGate: indexLoadGate})
		if err != nil {
			return nil, err
		}
		return &dirCache{
			store:     s,
			verdicts:  tokenauth.NewConfirmations(tokenauth.OfflineWindow),
			accepted:  tokenauth.NewConfirmations(tokenauth.OfflineWindow),
			remoteKey: remoteKey,
		}, nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("opening cache %s: %v", dir, err)
	}
	h.cacheDir = dir
	dc := val.(*dirCache)
	h.dirCache = dc
	if loaded {
		// A reload (or another site naming the same directory): the
		// configuration loaded last sets the bound and the shared tier,
		// once it serves (see stores).
		settings := cacheSettings{dir: dir, maxSize: maxSize, remote: r, remoteKey: remoteKey}
		if h.events == nil {
			dc.apply(settings, h.logger)
		} else {
			dc.applyWhenStarted(h.events, settings, h.logger)
		}
	}
	cache := registry.NewCache(dc.store, ttl, dc.verdicts)
	if h.Cache != nil {
		cache.NegativeTTL = time.Duration(h.Cache.NegativeTTL)
	}
	cache.Now = clock
	return cache, dc.accepted, nil
}

// clock is the registry caches' clock (tag_ttl, access confirmations) and
// the upstream clients' (pauses, outages):
// nil, which is time.Now, but in tests, where export_test.go sets one that
// can be moved forward instead of waiting for time to pass.
var clock func() time.Time

// indexLoadGate, when set (tests, export_test.go), holds the index load of
// the stores opened until it is closed.
var indexLoadGate <-chan struct{}

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
