// Package testdistribution runs distribution's registry (Debian's
// docker-registry package, distribution 2.8: /usr/bin/docker-registry) for
// tests, on 127.0.0.1, with filesystem storage and no auth. It is the real
// registry that answers a client sending no Accept with a schema 1 signed
// manifest converted on the fly, which go-containerregistry's registry
// does not do. StartV3 runs distribution v3 the same way: like 2.8, it has
// no referrers API.
//
// Without the binary, Start (StartV3) skips the test with a message, unless the
// environment variable DOCKER_PROXY_REQUIRE_REGISTRY=1 is set (as in CI):
// then the test fails.
package testdistribution
