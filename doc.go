// Package dockerproxy is a Caddy v2 HTTP handler, http.handlers.docker_proxy,
// that turns a Caddy site into a pull-through cache for container registries
// (Docker Hub, ghcr.io, quay.io, gcr.io, registry.k8s.io, public.ecr.aws, ...).
//
// Caddy supplies TLS, HTTP/2, site blocks, logging and reloads; the registry
// knowledge lives in package registry, authentication in tokenauth and the
// cache in blobcache (with its S3-compatible shared tier in
// blobcache/s3remote). This package only adapts them to Caddy: module.go
// is the module (Provision, Validate, ServeHTTP, Cleanup); caddyfile.go
// its directive, config.go its config types, cachepool.go the store of
// each cache directory, which lives across reloads, s3config.go the shared tier's
// config, authkey.go the token sealing key, transport.go the upstream
// transport and metrics.go its Prometheus counters.
package dockerproxy
