// Package registry holds the knowledge of the registry HTTP API that the
// proxy needs: the well-known upstreams and the host route table, request
// classification and validation, registry-style errors, the upstream client,
// and the request path that ties them to the token service and the cache.
//
// When the store has a shared tier (blobcache.Options.Remote), a local miss
// of a blob or a manifest by digest is filled from it before the upstream is
// asked, and a tag this instance knows nothing of takes the shared tier's
// record: several instances then cost the upstream one fetch between them.
// The cache never widens access across instances either: a shared copy is
// served to every client of a route only if the proxy's own identity
// fetched it in that repository, to others once the upstream accepts them.
package registry
