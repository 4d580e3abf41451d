package registry

import (
	"fmt"
	"net"
	"sort"
	"strings"
)

// hostTable is the host table of cloudflare-docker-proxy and
// go-docker-proxy: the first label(s) of a host under the configured domain,
// and the upstream they serve.
var hostTable = map[string]string{
	"docker":         DockerHub,
	"docker-staging": DockerHub,
	"quay":           "quay.io",
	"gcr":            "gcr.io",
	"k8s-gcr":        "k8s.gcr.io",
	"k8s":            "registry.k8s.io",
	"ghcr":           "ghcr.io",
	"cloudsmith":     "docker.cloudsmith.io",
	"ecr":            "public.ecr.aws",
	// The older names, still working for clients configured long ago.
	"hub":                        DockerHub,
	"registry":                   DockerHub,
	"registry.docker":            DockerHub,
	"quay.registry.docker":       "quay.io",
	"gcr.registry.docker":        "gcr.io",
	"k8s-gcr.registry.docker":    "k8s.gcr.io",
	"k8s.registry.docker":        "registry.k8s.io",
	"ghcr.registry.docker":       "ghcr.io",
	"cloudsmith.registry.docker": "docker.cloudsmith.io",
	"ecr.registry.docker":        "public.ecr.aws",
}

// RouterConfig is the routing part of the handler's configuration.
type RouterConfig struct {
	Default   string            // upstream of hosts without a route of their own
	Domain    string            // adds the seeds' host table on this domain
	Routes    map[string]string // host -> upstream
	Overrides map[string]string // well-known name -> URL
	Fallback  string            // debug: upstream of unknown hosts
}

// Router picks the upstream of a request: by containerd's ?ns= or a
// registry host as the first path component (on any routed host, among the
// configured upstreams only), by Host, then the default and the fallback.
type Router struct {
	hosts    map[string]Upstream // lower-case host without port
	byName   map[string]Upstream // every configured upstream by name
	def      *Upstream
	fallback *Upstream
}

// NewRouter builds the route table; errors name the offending entry.
func NewRouter(cfg RouterConfig) (*Router, error) {
	rt := &Router{hosts: map[string]Upstream{}, byName: map[string]Upstream{}}
	parse := func(what, s string) (Upstream, error) {
		u, err := ParseUpstream(s, cfg.Overrides)
		if err != nil {
			return Upstream{}, fmt.Errorf("%s: %w", what, err)
		}
		rt.byName[u.Name] = u
		return u, nil
	}
	if cfg.Default != "" {
		u, err := parse("upstream", cfg.Default)
		if err != nil {
			return nil, err
		}
		rt.def = &u
	}
	if cfg.Domain != "" {
		domain := strings.ToLower(strings.Trim(cfg.Domain, "."))
		if domain == "" || strings.ContainsAny(domain, "/:* ") {
			return nil, fmt.Errorf("domain %q: give a DNS name such as example.com", cfg.Domain)
		}
		for prefix, name := range hostTable {
			u, err := parse("domain", name)
			if err != nil {
				return nil, err
			}
			rt.hosts[prefix+"."+domain] = u
		}
	}
	for host, s := range cfg.Routes {
		u, err := parse("route "+host, s)
		if err != nil {
			return nil, err
		}
		rt.hosts[normalizeHost(host)] = u
	}
	if cfg.Fallback != "" {
		u, err := parse("fallback", cfg.Fallback)
		if err != nil {
			return nil, err
		}
		rt.fallback = &u
	}
	if rt.def == nil && len(rt.hosts) == 0 && rt.fallback == nil {
		return nil, fmt.Errorf("no upstream: give one, a domain, a route or a fallback")
	}
	return rt, nil
}

// ForHost returns the upstream that serves host (a Host header, port
// allowed), and whether the host is known. The fallback, if configured,
// serves unknown hosts but still reports known=false so that callers can log.
func (rt *Router) ForHost(host string) (u Upstream, known bool) {
	if u, ok := rt.hosts[normalizeHost(host)]; ok {
		return u, true
	}
	if rt.def != nil {
		return *rt.def, true
	}
	if rt.fallback != nil {
		return *rt.fallback, false
	}
	return Upstream{}, false
}

// ByName returns the configured upstream called name (docker.io, ghcr.io,
// host:port of a URL upstream; aliases such as registry-1.docker.io work).
func (rt *Router) ByName(name string) (Upstream, bool) {
	name = strings.ToLower(name)
	if canonical, ok := aliases[name]; ok {
		name = canonical
	}
	u, ok := rt.byName[name]
	return u, ok
}

// Table returns the route list shown to unknown hosts: host -> upstream URL.
func (rt *Router) Table() map[string]string {
	t := make(map[string]string, len(rt.hosts)+1)
	for h, u := range rt.hosts {
		t[h] = u.String()
	}
	if rt.def != nil {
		t["*"] = rt.def.String()
	}
	return t
}

// Names returns the names of the configured upstreams, sorted.
func (rt *Router) Names() []string {
	names := make([]string, 0, len(rt.byName))
	for n := range rt.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func normalizeHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
}
