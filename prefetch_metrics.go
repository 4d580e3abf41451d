package dockerproxy

import "github.com/caddy-dockerproxy/dockerproxy/registry"

// countPrefetch counts one prefetched image's result, so that an operator
// sees a schedule that the upstream's rate limit stops. The upstream label
// is the upstream's configured name, never a repository: the series stay
// few.
func countPrefetch(res registry.PrefetchResult) {
	procMetrics.prefetchImages.WithLabelValues(res.Upstream, res.Status).Inc()
}
