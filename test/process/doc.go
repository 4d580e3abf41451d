// Package process holds tests that need Caddy as a separate process: a
// SIGKILL in the middle of cache fills, `caddy reload` during transfers, and
// the peak memory (VmHWM) of the Caddy process while many clients pull big
// blobs. The tests build ./cmd/caddy once per run, start it with exec and
// talk to it over HTTP; the upstream is internal/testupstream, running in
// the test process.
//
// They are skipped under -short. The memory test pulls a 1 GiB blob;
// DOCKER_PROXY_MEM_BLOB_MIB makes it smaller (see memory_test.go).
package process
