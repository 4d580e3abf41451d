// Command caddy is a Caddy binary with the standard modules and the
// docker_proxy plugin, for development, tests and benchmarks:
//
//	go build ./cmd/caddy
//
// Users build their own with xcaddy (see README.md).
package main
