package registry

import (
	"sort"
	"strings"
)

// What the router tells about itself to the page that browsers get: the
// hosts it routes and the registries behind them, by their public names.

// olderHostPrefixes are the host table's older names (hub.<domain>,
// registry.docker.<domain>, ...): still routed, but not the names to give
// people who configure a client today.
var olderHostPrefixes = []string{
	"hub", "registry", "registry.docker", "quay.registry.docker", "gcr.registry.docker",
	"k8s-gcr.registry.docker", "k8s.registry.docker", "ghcr.registry.docker",
	"cloudsmith.registry.docker", "ecr.registry.docker",
}

// HostRoute is a host name the router sends to an upstream by Host.
type HostRoute struct {
	// Host is the host name, in lower case, without port.
	Host     string
	Upstream Upstream
	// Older says that Host is one of the host table's older names
	// (hub.<domain>, ghcr.registry.docker.<domain>, ...) for the
	// upstream the table gives it.
	Older bool
}

// HostRoutes returns the hosts routed by the host table and route entries,
// sorted by name.
func (rt *Router) HostRoutes() []HostRoute {
	routes := make([]HostRoute, 0, len(rt.hosts))
	for host, up := range rt.hosts {
		routes = append(routes, HostRoute{Host: host, Upstream: up, Older: isOlderHostName(host, up)})
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].Host < routes[j].Host })
	return routes
}

func isOlderHostName(host string, up Upstream) bool {
	for _, prefix := range olderHostPrefixes {
		if strings.HasPrefix(host, prefix+".") && hostTable[prefix] == up.Name {
			return true
		}
	}
	return false
}

// Upstreams returns every configured upstream, sorted by name.
func (rt *Router) Upstreams() []Upstream {
	ups := make([]Upstream, 0, len(rt.byName))
	for _, name := range rt.Names() {
		ups = append(ups, rt.byName[name])
	}
	return ups
}

// PublicURL returns the public API address of the well-known registry
// called name (https://registry-1.docker.io for docker.io), whatever URL
// the configuration points the name at; ok is false for other names.
func PublicURL(name string) (url string, ok bool) {
	url, ok = wellKnown[name]
	return url, ok
}
