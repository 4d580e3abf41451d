// Package s3remote is a blobcache.Remote on an S3-compatible bucket (AWS
// S3, MinIO, Cloudflare R2, ...), so that several instances of the proxy
// behind one load balancer share one cache.
//
// Layout under Config.Prefix in the bucket:
//
//	blobs/<alg>/<hex>          an entry's bytes; Content-Type is its media
//	                           type, user metadata "scopes" its access scopes
//	tags/<h[:2]>/<h>.json      a tag record, h = sha256 of the opaque tag key
//
// Scopes go in user metadata, whose size S3 limits to 2 KiB: those that do
// not fit are left out. A scope left out only costs an access check with
// the upstream (see blobcache.RemoteEntry); it never widens access.
package s3remote
