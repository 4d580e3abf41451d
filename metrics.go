package dockerproxy

import (
	"errors"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics counts the handler's responses by what the cache did, so that
// operators see their hit ratio and how often the upstream failed them.
type metrics struct {
	// byOutcome holds the counter of each outcome, resolved once so that
	// a request costs no label lookup.
	byOutcome map[string]prometheus.Counter
}

var outcomes = []string{"hit", "miss", "shared", "joined", "revalidated", "stale", "bypass", "none"}

// registerMetrics registers the collectors into Caddy's registry. Every
// Provision calls it (each config reload builds new handlers); a collector
// already registered by another handler or an earlier config is reused.
func registerMetrics(reg prometheus.Registerer) (*metrics, error) {
	responses := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "docker_proxy",
		Name:      "responses_total",
		Help:      "Registry API responses by cache outcome: hit, miss, shared (filled from the shared tier), joined (a fill in progress), revalidated, stale (served after an upstream failure), bypass (cache off or unavailable), none (not cacheable).",
	}, []string{"cache"})
	if err := reg.Register(responses); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, err
		}
		existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, err
		}
		responses = existing
	}
	m := &metrics{byOutcome: map[string]prometheus.Counter{}}
	for _, o := range outcomes {
		m.byOutcome[o] = responses.WithLabelValues(o)
	}
	return m, nil
}

// observe counts one response from its Cache-Status header.
func (m *metrics) observe(cacheStatus string) {
	m.byOutcome[cacheOutcome(cacheStatus)].Inc()
}

func cacheOutcome(s string) string {
	switch {
	case s == "":
		return "none"
	case strings.Contains(s, "; hit"):
		return "hit"
	case strings.Contains(s, "collapsed"):
		return "joined"
	case strings.Contains(s, "stale-if-error"):
		return "stale"
	case strings.Contains(s, "fwd=stale"):
		return "revalidated"
	case strings.Contains(s, "fwd=bypass"):
		return "bypass"
	case strings.Contains(s, "detail=shared"):
		return "shared"
	case strings.Contains(s, "fwd=miss"):
		return "miss"
	}
	return "none"
}
