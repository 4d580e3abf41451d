package dockerproxy

import (
	"github.com/caddyserver/caddy/v2"
)

// Credential is an identity the proxy uses towards one upstream for clients
// that bring none of their own (for example a Docker Hub access token, which
// lifts the anonymous pull limit for everyone behind the proxy).
type Credential struct {
	// Upstream is the name or URL of the upstream the credential is for.
	// Empty means the handler's default upstream.
	Upstream string `json:"upstream,omitempty"`
	Username string `json:"username"`
	// Secret is a password or access token. Placeholders such as
	// {env.DOCKERHUB_TOKEN} are expanded at provision time, in Username
	// too; either one empty after that is a provision error.
	Secret string `json:"secret"`
}

// CacheConfig configures the content-addressed cache.
type CacheConfig struct {
	// Disabled turns the cache off: every request is proxied.
	Disabled bool `json:"disabled,omitempty"`
	// Dir is the cache directory. Default: "docker_proxy/cache" under
	// Caddy's data directory. Every handler naming the same directory uses
	// one store, the directory's.
	Dir string `json:"dir,omitempty"`
	// MaxSize bounds the bytes on disk; least recently used entries are
	// evicted beyond it. Zero means unbounded.
	MaxSize int64 `json:"max_size,omitempty"`
	// TagTTL is how long a tag's digest is served without asking the
	// upstream. Default 5m.
	TagTTL caddy.Duration `json:"tag_ttl,omitempty"`
	// NegativeTTL is how long the upstream's 404 for a tag is answered
	// without asking it again, per identity. Default 0: never.
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`
	// S3 is a bucket that several instances behind one load balancer
	// share as a second tier behind their local caches. It belongs to
	// the cache directory: every handler naming the directory should
	// give the same one (the configuration provisioned last sets it).
	S3 *S3Config `json:"s3,omitempty"`
}

// S3Config names an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2,
// ...). Placeholders such as {env.S3_SECRET_KEY} are expanded in every
// field at provision time.
type S3Config struct {
	// Endpoint is the service's URL; its scheme decides TLS, e.g.
	// https://s3.eu-west-1.amazonaws.com or http://minio:9000.
	Endpoint string `json:"endpoint"`
	Bucket   string `json:"bucket"`
	// Region of the bucket; empty takes AWS_REGION, else us-east-1. R2
	// wants "auto".
	Region string `json:"region,omitempty"`
	// Prefix is put before every object name, e.g. "docker_proxy/".
	Prefix    string `json:"prefix,omitempty"`
	AccessKey string `json:"access_key"`
	SecretKey string `json:"secret_key"`
}
