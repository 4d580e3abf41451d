// Package testupstream is a test upstream that behaves like Docker Hub: a
// real registry (go-containerregistry's pkg/registry, in memory) behind a
// front that demands bearer tokens from a separate realm listener, keeps
// public and private repositories apart, sends blob GETs with a 307 to a
// separate "object store" listener that rejects any Authorization header
// (as S3/CloudFront do), adds Docker Hub's ratelimit headers, negotiates
// manifest lists the way distribution does, counts what it serves, can
// record what each of its hosts received (Options.RecordRequests) and can
// be told to misbehave (Faults, AddResponseHeaders).
//
// It exists so that the proxy's tests can assert what a user of a pull-
// through cache would see against an upstream with Docker Hub's quirks,
// without the network.
//
// Typical use:
//
//	u := testupstream.Start(t, testupstream.Options{})
//	img := u.PushRandomImage(t, "library/alpine", "latest", 2, 1<<10)
//	// point the proxy at u.URL; it learns u.Realm from the 401 challenge
//	... pull through the proxy ...
//	if u.Counters.ManifestGETsFor("library/alpine") != 1 { ... }
//
// Things worth knowing:
//   - Content is written with the Put*/Push* helpers straight into the
//     in-memory registry: nothing can be pushed through the front (401), and
//     setup does not move the Counters.
//   - Anonymous tokens grant pull on every repository that is not private,
//     including ones that do not exist (which then answer 404), so a 401 on
//     a repository request always means "private, wrong or missing token".
//   - Blobs are linked per repository: a blob asked through a repository
//     that does not hold it is 404, as on Docker Hub.
//   - StartMirror adds a second registry host that the registry sends
//     manifest, tags/list and referrers requests to, as registry.k8s.io
//     sends them to Artifact Registry.
//   - The realm advertised in challenges is http://127.0.0.1:PORT/token
//     unless Options.RealmHost is set (needed only for direct ggcr clients).
package testupstream
