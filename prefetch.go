package dockerproxy

// Prefetch: images pulled into the cache ahead of clients, on a schedule
// (the prefetch block) or on request (POST /docker_proxy/prefetch, in
// admin_prefetch.go). The fetching itself is registry.Proxy.Prefetch: the
// request path of a client's pull, as the proxy's own identity.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// PrefetchConfig is a scheduled prefetch: images pulled into the cache
// when the config starts and then every interval.
type PrefetchConfig struct {
	// Interval between the starts of two runs; at least a minute.
	Interval caddy.Duration `json:"interval"`
	// Images are references as docker pull takes them
	// (docker.io/library/alpine:3.20, ghcr.io/org/tool@sha256:...), each
	// of a registry this handler serves.
	Images []string `json:"images"`
	// Platforms of an index to fetch (linux/amd64, linux/arm64/v8); all
	// when empty.
	Platforms []string `json:"platforms,omitempty"`
}

// minPrefetchInterval keeps a schedule from asking the upstream over and
// over: a run of cached images still costs a HEAD per tag past tag_ttl.
const minPrefetchInterval = time.Minute

// maxPrefetchImages bounds the images of one run or one POST.
const maxPrefetchImages = 1000

// check validates the block: interval, references, platforms, and that
// the handler serves each image's registry (router).
func (c *PrefetchConfig) check(router *registry.Router, cacheOff bool) error {
	if c == nil {
		return nil
	}
	if cacheOff {
		return errors.New("prefetch: the cache is off, and a prefetch fills the cache")
	}
	if time.Duration(c.Interval) < minPrefetchInterval {
		return fmt.Errorf("prefetch: interval %s is shorter than %s", time.Duration(c.Interval), minPrefetchInterval)
	}
	if len(c.Images) == 0 {
		return errors.New("prefetch: no images")
	}
	if len(c.Images) > maxPrefetchImages {
		return fmt.Errorf("prefetch: %d images, more than %d", len(c.Images), maxPrefetchImages)
	}
	if _, err := c.images(router); err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	if _, err := parsePlatforms(c.Platforms); err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	return nil
}

// images parses the references and checks that router (nil: not checked)
// routes each one's registry.
func (c *PrefetchConfig) images(router *registry.Router) ([]registry.PullRef, error) {
	refs := make([]registry.PullRef, 0, len(c.Images))
	seen := map[string]bool{}
	for _, s := range c.Images {
		ref, err := registry.ParsePullRef(s)
		if err != nil {
			return nil, err
		}
		if seen[ref.String()] {
			return nil, fmt.Errorf("image %s given twice", ref)
		}
		seen[ref.String()] = true
		if router != nil {
			if _, ok := router.ByName(ref.Registry); !ok {
				return nil, fmt.Errorf("image %s: registry %s is not one this handler serves (%v)", s, ref.Registry, router.Names())
			}
		}
		refs = append(refs, ref)
	}
	return refs, nil
}

// parsePlatforms parses platform strings, each once.
func parsePlatforms(ss []string) ([]registry.Platform, error) {
	var ps []registry.Platform
	seen := map[registry.Platform]bool{}
	for _, s := range ss {
		p, err := registry.ParsePlatform(s)
		if err != nil {
			return nil, err
		}
		if seen[p] {
			return nil, fmt.Errorf("platform %s given twice", p)
		}
		seen[p] = true
		ps = append(ps, p)
	}
	return ps, nil
}

// checkPrefetch is Validate's check of the prefetch block.
func (h *Handler) checkPrefetch() error {
	if h.Prefetch == nil {
		return nil
	}
	router, err := registry.NewRouter(h.routerConfig())
	if err != nil {
		return err
	}
	return h.Prefetch.check(router, h.Cache != nil && h.Cache.Disabled)
}

// prefetchJob is one image of a run, with the handler whose proxy fetches
// it.
type prefetchJob struct {
	h   *Handler
	img registry.PullRef
}

// runPrefetch prefetches the jobs one after another and reports each
// result to done (and progress, if not nil, to progress). An upstream
// that answered 429 or reported its quota used up is asked nothing more in
// this run: its later images are reported rate_limited at once.
func runPrefetch(ctx context.Context, jobs []prefetchJob, platforms []registry.Platform, progress func(registry.PrefetchProgress), done func(registry.PrefetchResult)) {
	limited := map[string]string{} // upstream name -> why
	for _, j := range jobs {
		if ctx.Err() != nil {
			return
		}
		var res registry.PrefetchResult
		up, _ := j.h.proxy.Router.ByName(j.img.Registry)
		if why, ok := limited[up.Name]; ok {
			res = registry.PrefetchResult{Image: j.img.String(), Upstream: up.Name, Status: registry.PrefetchRateLimited, RateLimited: why,
				Error: "not asked: the upstream " + limitReason(why) + " earlier in this run"}
		} else {
			// The run holds the handler's store as a request does: a
			// reload that moves the cache waits for it.
			j.h.inFlight.begin()
			res = j.h.proxy.Prefetch(ctx, j.img, platforms, progress)
			j.h.inFlight.end()
		}
		if res.RateLimited != "" && limited[res.Upstream] == "" {
			limited[res.Upstream] = res.RateLimited
			j.h.logger.Warn("prefetch: the upstream "+limitReason(res.RateLimited)+"; its images wait for the next run",
				zap.String("upstream", res.Upstream), zap.String("image", res.Image))
		}
		countPrefetch(res)
		done(res)
	}
}

func limitReason(why string) string {
	if why == registry.LimitedByQuota {
		return "reported its pull quota used up"
	}
	return "answered 429 Too Many Requests"
}

// prefetchSchedule runs a handler's prefetch block: once when the config
// has started, then every interval, one run at a time, until the handler
// is cleaned up.
type prefetchSchedule struct {
	h         *Handler
	interval  time.Duration
	images    []registry.PullRef
	platforms []registry.Platform

	ctx    context.Context
	cancel context.CancelFunc
	// wake starts the next run now (tests: the next interval, without
	// waiting for it).
	wake    chan struct{}
	once    sync.Once
	started atomic.Bool
}

// provisionPrefetch sets up the schedule of a prefetch block, which starts
// when Caddy reports the config started: never in caddy validate or adapt,
// never for a config that Caddy rejects.
func (h *Handler) provisionPrefetch(ctx caddy.Context) error {
	if h.Prefetch == nil {
		return nil
	}
	if h.proxy.Cache == nil {
		h.logger.Error("prefetch: the cache is unavailable; nothing will be prefetched")
		return nil
	}
	images, err := h.Prefetch.images(h.proxy.Router)
	if err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	platforms, err := parsePlatforms(h.Prefetch.Platforms)
	if err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	s := &prefetchSchedule{h: h, interval: time.Duration(h.Prefetch.Interval), images: images, platforms: platforms, wake: make(chan struct{}, 1)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	h.prefetch = s
	if h.events == nil {
		// Provisioned outside a config that can start: nothing says it
		// ever serves, so it never prefetches.
		return nil
	}
	if err := h.events.On("started", prefetchStarter{s}); err != nil {
		// The events app has started already, and so has the config.
		s.start()
	}
	return nil
}

// prefetchStarter starts a schedule when its config has started.
type prefetchStarter struct{ s *prefetchSchedule }

func (p prefetchStarter) Handle(context.Context, caddy.Event) error {
	p.s.start()
	return nil
}

func (s *prefetchSchedule) start() {
	s.once.Do(func() {
		s.started.Store(true)
		go s.loop()
	})
}

// stopPrefetch ends the handler's schedule: a run in progress stops at its
// next request (fills that clients joined go on without it).
func (h *Handler) stopPrefetch() {
	if h.prefetch != nil {
		h.prefetch.cancel()
	}
}

func (s *prefetchSchedule) loop() {
	for {
		s.run()
		timer := time.NewTimer(s.interval)
		select {
		case <-s.ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-s.wake:
			timer.Stop()
		}
	}
}

// run prefetches the block's images once and logs what became of each.
func (s *prefetchSchedule) run() {
	logger := s.h.logger.Named("prefetch")
	jobs := make([]prefetchJob, len(s.images))
	for i, img := range s.images {
		jobs[i] = prefetchJob{h: s.h, img: img}
	}
	counts := map[string]int{}
	runPrefetch(s.ctx, jobs, s.platforms, nil, func(res registry.PrefetchResult) {
		counts[res.Status]++
		fields := []zap.Field{zap.String("image", res.Image), zap.String("status", res.Status), zap.String("digest", res.Digest),
			zap.Int("blobs", res.Blobs), zap.Int("blobs_fetched", res.BlobsFetched), zap.Int64("bytes_fetched", res.BytesFetched)}
		if res.Error != "" {
			logger.Warn("prefetch: image not done", append(fields, zap.String("error", res.Error))...)
			return
		}
		logger.Info("prefetch: image done", fields...)
	})
	logger.Info("prefetch run finished", zap.Int("fetched", counts[registry.PrefetchFetched]), zap.Int("cached", counts[registry.PrefetchCached]),
		zap.Int("failed", counts[registry.PrefetchFailed]), zap.Int("rate_limited", counts[registry.PrefetchRateLimited]),
		zap.Duration("next_in", s.interval))
}
