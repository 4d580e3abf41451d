package dockerproxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// metrics counts the handler's responses by what the cache did, so that
// operators see their hit ratio and how often the upstream failed them.
type metrics struct {
	// byOutcome holds the counter of each registry.Outcome, indexed by
	// it and resolved once, so that a request costs no label lookup.
	byOutcome []prometheus.Counter
	// fillFailures counts blob fills that the upstream's body failed
	// (wrong bytes, cut short, stalled), by registry.FillFailureReasons.
	fillFailures map[string]prometheus.Counter
}

// registerMetrics registers the collectors into Caddy's registry. Every
// Provision calls it (each config reload builds new handlers); a collector
// already registered by another handler or an earlier config is reused.
func registerMetrics(reg prometheus.Registerer) (*metrics, error) {
	responses := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "docker_proxy",
		Name:      "responses_total",
		Help:      "Registry API responses by cache outcome, the one their Cache-Status names: hit, miss (fetched from the upstream), shared (fetched from the shared tier), joined (served from a fill in progress), revalidated (a tag the upstream confirmed unchanged), stale (the last known answer, served after an upstream failure), bypass (cache off, or unable to store), refused (the upstream refused this client: 401, 403, 404), error (the upstream failed and nothing cached could answer), none (no cache outcome: the token endpoint, /v2/, invalid requests, lists answered by the upstream).",
	}, []string{"cache"})
	responses, err := registerOrReuse(reg, responses)
	if err != nil {
		return nil, err
	}
	fills := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "docker_proxy",
		Name:      "fill_failures_total",
		Help:      "Blob fills that failed on the upstream's body, by reason: digest_mismatch (wrong bytes), short_body (cut before its announced end), stalled (nothing sent for too long), read_error. Every client of such a fill had its connection aborted and nothing was kept.",
	}, []string{"reason"})
	fills, err = registerOrReuse(reg, fills)
	if err != nil {
		return nil, err
	}
	m := &metrics{fillFailures: map[string]prometheus.Counter{}}
	for _, o := range registry.Outcomes() {
		m.byOutcome = append(m.byOutcome, responses.WithLabelValues(o.Label()))
	}
	// Every reason resolved now: each series shows from the start, at 0.
	for _, r := range registry.FillFailureReasons {
		m.fillFailures[r] = fills.WithLabelValues(r)
	}
	return m, nil
}

// registerOrReuse registers c, or returns the collector of the same name
// that an earlier config or another handler registered.
func registerOrReuse(reg prometheus.Registerer, c *prometheus.CounterVec) (*prometheus.CounterVec, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		return nil, err
	}
	existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
	if !ok {
		return nil, err
	}
	return existing, nil
}

// fillFailed counts one failed fill; an unknown reason (none today) counts
// as read_error, so the label set stays the bounded one.
func (m *metrics) fillFailed(reason string) {
	c, ok := m.fillFailures[reason]
	if !ok {
		c = m.fillFailures["read_error"]
	}
	c.Inc()
}

// observe counts one response by its outcome.
func (m *metrics) observe(o registry.Outcome) {
	m.byOutcome[o].Inc()
}
