package dockerproxy

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// The handler's metrics, in Caddy's metrics registry. Every series is
// labelled by upstream name (docker.io, ghcr.io, host:port), which the
// configuration bounds, never by repository; the store's by cache
// directory.
//
// Caddy builds a new metrics registry for every config it loads. The
// collectors below are made once per process and registered into each
// config's registry, so a reload keeps every count: a scrape after a
// reload goes on from the numbers before it (README, "Metrics").
var procMetrics = newCollectors()

// collectors are the process's metric collectors.
type collectors struct {
	responses        *prometheus.CounterVec
	responseBytes    *prometheus.CounterVec
	upstreamBytes    *prometheus.CounterVec
	upstreamRequests *prometheus.CounterVec
	fillFailures     *prometheus.CounterVec
	quotaLimit       *prometheus.GaugeVec
	quotaRemaining   *prometheus.GaugeVec
	quotaWindow      *prometheus.GaugeVec
	fillDuration     *prometheus.HistogramVec
	fillSize         *prometheus.HistogramVec
	prefetchImages   *prometheus.CounterVec
	stores           *storeCollector
}

func newCollectors() *collectors {
	const ns, sub = "caddy", "docker_proxy"
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels)
	}
	return &collectors{
		responses: counter("responses_total",
			"Registry API responses by upstream, request kind (manifest, blob, tags, referrers, token, base, none) and cache outcome, the one their Cache-Status names: hit, miss (fetched from the upstream), shared (fetched from the shared tier), joined (served from a fill in progress), revalidated (a tag the upstream confirmed unchanged), stale (the last known answer, served after an upstream failure), bypass (cache off, or unable to store), refused (the upstream refused this client: 401, 403, 404), error (the upstream failed and nothing cached could answer), none (no cache outcome: the token endpoint, /v2/, invalid requests, lists answered by the upstream).",
			"upstream", "kind", "cache"),
		responseBytes: counter("response_bytes_total",
			"Body bytes sent to clients, by upstream and by where they came from: cache (hit, joined, revalidated, stale), shared (the shared tier), upstream (miss, bypass, refused, error), proxy (answers of the proxy's own: tokens, /v2/, errors).",
			"upstream", "source"),
		upstreamBytes: counter("upstream_bytes_total",
			"Body bytes read from upstreams (their redirect targets and token realms included), by upstream.",
			"upstream"),
		upstreamRequests: counter("upstream_requests_total",
			"HTTP requests sent on behalf of an upstream (to it, to where it redirected, to its token realm), by upstream, kind (manifest, blob, tags, referrers, token, base) and status: 2xx, 3xx, 4xx, 429, 5xx, connect_error (no connection: refused, unreachable, DNS), error (anything else without an answer: a timeout, a reset).",
			"upstream", "kind", "status"),
		fillFailures: counter("fill_failures_total",
			"Blob fills that failed on the upstream's body, by upstream and reason: digest_mismatch (wrong bytes), short_body (cut before its announced end), stalled (nothing sent for too long), read_error. Every client of such a fill had its connection aborted and nothing was kept.",
			"upstream", "reason"),
		quotaLimit: gauge("upstream_quota_limit",
			"The pull quota the upstream reported last (Docker Hub's ratelimit-limit), by upstream and identity: anonymous, the configured account's username, or client (a client's own credentials).",
			"upstream", "identity"),
		quotaRemaining: gauge("upstream_quota_remaining",
			"The pulls left of the quota as the upstream reported last (Docker Hub's ratelimit-remaining), by upstream and identity.",
			"upstream", "identity"),
		quotaWindow: gauge("upstream_quota_window_seconds",
			"The quota's window as the upstream reported last (w=), by upstream and identity; 0 when it gave none.",
			"upstream", "identity"),
		fillDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "fill_duration_seconds",
			Help:    "Time a blob fill took, from the upstream's answer to the fill's end (every byte read, verified and stored), for fills from an upstream whose bytes proved right, by upstream.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}}, []string{"upstream"}),
		fillSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "fill_size_bytes",
			Help:    "Size of the blob fills from an upstream that completed, by upstream.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 12)}, []string{"upstream"}),
		prefetchImages: counter("prefetch_images_total",
			"Images prefetched (scheduled or through the admin API), by upstream name and result: fetched (some of it came from the upstream), cached (all of it was cached already), failed, rate_limited (the upstream answered 429 or reported its pull quota used up; the run asked it nothing more).",
			"upstream", "result"),
		stores: newStoreCollector(),
	}
}

// register registers every collector into reg (a config's registry); one
// that an earlier handler of the same config registered is left as is.
func (c *collectors) register(reg prometheus.Registerer) error {
	for _, col := range []prometheus.Collector{c.responses, c.responseBytes, c.upstreamBytes, c.upstreamRequests,
		c.fillFailures, c.quotaLimit, c.quotaRemaining, c.quotaWindow, c.fillDuration, c.fillSize, c.prefetchImages, c.stores} {
		err := reg.Register(col)
		var are prometheus.AlreadyRegisteredError
		if err != nil && (!errors.As(err, &are) || are.ExistingCollector != col) {
			return err
		}
	}
	return nil
}

// metrics is one handler's view of the collectors: the series of its
// upstreams resolved ahead, so that a request costs no label lookup.
type metrics struct {
	c *collectors
	// byUpstream holds the series of each configured upstream, and of ""
	// (requests routed nowhere); read-only once built.
	byUpstream map[string]*upstreamSeries
	// others holds those of upstreams the configuration did not list (a
	// fallback), made on first use.
	mu     sync.Mutex
	others map[string]*upstreamSeries
}

// upstreamSeries are the per-request series of one upstream.
type upstreamSeries struct {
	name string
	// responses is indexed by kind, then outcome; each made on first use
	// (most pairs never happen: no blob is revalidated).
	responses [numKinds][]lazyCounter
	bytes     [numSources]prometheus.Counter
}

// lazyCounter is a counter child resolved on its first use.
type lazyCounter struct {
	once sync.Once
	c    prometheus.Counter
}

// registerMetrics registers the collectors into Caddy's registry (every
// Provision calls it: each config has a registry of its own) and resolves
// the series of upstreams.
func registerMetrics(reg prometheus.Registerer, upstreams []string) (*metrics, error) {
	if err := procMetrics.register(reg); err != nil {
		return nil, err
	}
	m := &metrics{c: procMetrics, byUpstream: map[string]*upstreamSeries{}}
	for _, name := range append(upstreams, "") {
		m.byUpstream[name] = m.newSeries(name)
	}
	// Every reason resolved now: each series shows from the start, at 0.
	for _, name := range upstreams {
		for _, r := range registry.FillFailureReasons {
			m.c.fillFailures.WithLabelValues(name, r)
		}
	}
	return m, nil
}

func (m *metrics) newSeries(name string) *upstreamSeries {
	s := &upstreamSeries{name: name}
	for k := range s.responses {
		s.responses[k] = make([]lazyCounter, len(registry.Outcomes()))
	}
	label := upstreamLabel(name)
	for src := range s.bytes {
		s.bytes[src] = m.c.responseBytes.WithLabelValues(label, source(src).String())
	}
	return s
}

// upstreamLabel is the upstream label of a name: "none" for requests
// routed nowhere (an unknown host), which no upstream name can be.
func upstreamLabel(name string) string {
	if name == "" {
		return "none"
	}
	return name
}

// series returns the series of the upstream called name.
func (m *metrics) series(name string) *upstreamSeries {
	if s, ok := m.byUpstream[name]; ok {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.others == nil {
		m.others = map[string]*upstreamSeries{}
	}
	s, ok := m.others[name]
	if !ok {
		s = m.newSeries(name)
		m.others[name] = s
	}
	return s
}

// observe counts one response: the body bytes it sent, then its outcome.
// In that order: a scrape that sees the response counted and the next one
// see its bytes (a scrape reads the collectors concurrently).
func (m *metrics) observe(res registry.Result, sent int64) {
	s := m.series(res.Upstream)
	if sent > 0 {
		s.bytes[sourceOf(res)].Add(float64(sent))
	}
	k := kindIndex(res.Kind)
	lc := &s.responses[k][res.Outcome]
	lc.once.Do(func() {
		lc.c = m.c.responses.WithLabelValues(upstreamLabel(s.name), kindLabel(res.Kind), res.Outcome.Label())
	})
	lc.c.Inc()
}

// fillFailed counts one failed fill; an unknown reason (none today) counts
// as read_error, so the label set stays the bounded one.
func (m *metrics) fillFailed(upstream, reason string) {
	known := false
	for _, r := range registry.FillFailureReasons {
		known = known || r == reason
	}
	if !known {
		reason = "read_error"
	}
	m.c.fillFailures.WithLabelValues(upstreamLabel(upstream), reason).Inc()
}

// filled records one completed fill from upstream: its duration, then its
// size (a scrape that sees the size and the next one see the duration).
func (m *metrics) filled(upstream string, size int64, took float64) {
	m.c.fillDuration.WithLabelValues(upstreamLabel(upstream)).Observe(took)
	m.c.fillSize.WithLabelValues(upstreamLabel(upstream)).Observe(float64(size))
}

// The kinds of request, as the kind label names them; index 0 is a
// request whose path was not understood.
const numKinds = int(registry.KindReferrers) + 1

func kindIndex(k registry.Kind) int {
	if int(k) < 0 || int(k) >= numKinds {
		return 0
	}
	return int(k)
}

func kindLabel(k registry.Kind) string {
	switch k {
	case 0:
		return "none"
	case registry.KindAuth:
		return "token"
	}
	return k.String()
}

// source is where a response's body came from.
type source int

const (
	sourceCache source = iota
	sourceShared
	sourceUpstream
	sourceProxy
	numSources
)

func (s source) String() string {
	return [...]string{"cache", "shared", "upstream", "proxy"}[s]
}

// sourceOf is where the body of a response with res came from. A joined
// response streams a fill that another request started: its bytes came
// from the upstream once, for that request, and count as the cache's here.
func sourceOf(res registry.Result) source {
	switch res.Outcome {
	case registry.OutcomeHit, registry.OutcomeJoined, registry.OutcomeRevalidated, registry.OutcomeStale:
		return sourceCache
	case registry.OutcomeShared:
		return sourceShared
	case registry.OutcomeNone:
		return sourceProxy
	}
	return sourceUpstream
}
