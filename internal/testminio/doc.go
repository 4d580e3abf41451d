// Package testminio runs a real MinIO server for tests of the shared cache
// tier: a `minio` binary on PATH or in $GOPATH/bin (go install
// github.com/minio/minio@latest), serving a temporary directory on
// 127.0.0.1, with one bucket.
//
// Without the binary, Start skips the test with a message, unless the
// environment variable DOCKER_PROXY_REQUIRE_MINIO=1 is set (as in CI): then
// the test fails.
package testminio
