// Package blobcache is the content-addressed store for registry blobs and
// manifests: streaming fill, digest check, single-flight fan-out, atomic
// commit, LRU eviction, tag records.
//
// A Store may have a second, shared tier behind it (Options.Remote, an
// S3-compatible bucket for instance) that several instances behind one
// load balancer use together. The local store stays the serving tier: what
// it commits from an upstream it uploads in the background, and a fill may
// take its bytes from the remote instead of the upstream (Fill.StartRemote),
// verified as any fill is. See remote.go and upload.go.
//
// The index of what the directory holds is built in the background after
// Open returns, while the store serves: a lookup it misses meanwhile looks
// on disk (load.go). It is shaped to stay small at millions of entries
// (index.go): no allocation or pointer per entry, interned scope sets.
//
// Layout under Options.Dir:
//
//	blobs/<alg>/<hex[:2]>/<hex>       entry bytes (renamed into place only once verified)
//	blobs/<alg>/<hex[:2]>/<hex>.json  sidecar: digest, size, media type, access scopes
//	tmp/                              fills and sidecar writes in progress (emptied at Open)
//	tags/<h[:2]>/<h>.json             tag records, h = sha256 of the opaque tag key
//
// One Store owns a directory: two Stores on the same Dir in one process (or
// two processes) are not supported, because Open empties tmp/.
package blobcache
