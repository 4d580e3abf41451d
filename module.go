// Package dockerproxy is a Caddy v2 HTTP handler, http.handlers.docker_proxy,
// that turns a Caddy site into a pull-through cache for container registries
// (Docker Hub, ghcr.io, quay.io, gcr.io, registry.k8s.io, public.ecr.aws, ...).
//
// Caddy supplies TLS, HTTP/2, site blocks, logging and reloads; the registry
// knowledge lives in package registry, authentication in tokenauth and the
// cache in blobcache. This file only adapts them to Caddy.
package dockerproxy

import (
	"encoding/json"

	"github.com/caddyserver/caddy/v2"
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
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.docker_proxy",
		New: func() caddy.Module { return new(Handler) },
	}
}
