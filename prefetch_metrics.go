package dockerproxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// prefetchMetrics counts prefetched images by upstream and result, so that
// an operator sees a schedule that the upstream's rate limit stops.
type prefetchMetrics struct {
	images *prometheus.CounterVec
}

// registerPrefetchMetrics registers the collector into Caddy's registry,
// or reuses the one an earlier config registered.
func registerPrefetchMetrics(reg prometheus.Registerer) (*prefetchMetrics, error) {
	images := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "docker_proxy",
		Name:      "prefetch_images_total",
		Help:      "Images prefetched (scheduled or through the admin API), by upstream name and result: fetched (some of it came from the upstream), cached (all of it was cached already), failed, rate_limited (the upstream answered 429 or reported its pull quota used up; the run asked it nothing more).",
	}, []string{"upstream", "result"})
	images, err := registerOrReuse(reg, images)
	if err != nil {
		return nil, err
	}
	return &prefetchMetrics{images: images}, nil
}

// count counts one image's result. The upstream label is the upstream's
// configured name, never a repository: the series stay few.
func (m *prefetchMetrics) count(res registry.PrefetchResult) {
	if m == nil {
		return
	}
	m.images.WithLabelValues(res.Upstream, res.Status).Inc()
}
