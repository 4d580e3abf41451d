package dockerproxy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/blobcache/s3remote"
)

// The shared tier's config: checked as the Caddyfile checks it, then
// expanded into an s3remote bucket at provision time.

// check checks a shared tier config as the Caddyfile does: endpoint and
// bucket given, both keys or neither, endpoint and bucket valid unless
// they hold placeholders (checked again once expanded).
func (c *S3Config) check() error {
	switch {
	case c.Endpoint == "":
		return errors.New("s3: endpoint is required")
	case c.Bucket == "":
		return errors.New("s3: bucket is required")
	case (c.AccessKey == "") != (c.SecretKey == ""):
		return errors.New("s3: " + s3remote.KeysRule)
	}
	if !hasPlaceholder(c.Endpoint) {
		if err := s3remote.CheckEndpoint(c.Endpoint); err != nil {
			return err
		}
	}
	if !hasPlaceholder(c.Bucket) {
		if err := s3remote.CheckBucket(c.Bucket); err != nil {
			return err
		}
	}
	return nil
}

// hasPlaceholder reports whether a config value holds a placeholder, to
// be checked once expanded at provision time.
func hasPlaceholder(v string) bool { return strings.Contains(v, "{") }

// remoteKeyOf identifies an expanded shared tier config, secret included
// (hashed), so that a reload that changes any of it changes the store's.
func remoteKeyOf(c s3remote.Config) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{c.Endpoint, c.Bucket, c.Region, c.Prefix, c.AccessKey, c.SecretKey}, "\x00")))
	return hex.EncodeToString(sum[:])
}

// sharedRemote is a shared tier with the key of its config.
type sharedRemote struct {
	remote blobcache.Remote
	key    string
}

// sharedTier sets up the shared tier the cache config names (nil: none),
// its placeholders expanded. Errors name the field, never a key.
func (h *Handler) sharedTier(repl *caddy.Replacer) (*sharedRemote, error) {
	if h.Cache == nil || h.Cache.S3 == nil {
		return nil, nil
	}
	c := h.Cache.S3
	cfg := s3remote.Config{
		Endpoint:  repl.ReplaceKnown(c.Endpoint, ""),
		Bucket:    repl.ReplaceKnown(c.Bucket, ""),
		Region:    repl.ReplaceKnown(c.Region, ""),
		Prefix:    repl.ReplaceKnown(c.Prefix, ""),
		AccessKey: repl.ReplaceKnown(c.AccessKey, ""),
		SecretKey: repl.ReplaceKnown(c.SecretKey, ""),
	}
	for _, f := range []struct{ name, given, value string }{
		{"endpoint", c.Endpoint, cfg.Endpoint}, {"bucket", c.Bucket, cfg.Bucket},
		{"access_key", c.AccessKey, cfg.AccessKey}, {"secret_key", c.SecretKey, cfg.SecretKey},
	} {
		if f.given != "" && f.value == "" {
			return nil, fmt.Errorf("cache s3: %s is empty once placeholders are expanded (is its environment variable set?)", f.name)
		}
	}
	r, err := s3remote.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("cache %w", err)
	}
	h.logger.Info("shared tier", zap.String("endpoint", cfg.Endpoint), zap.String("bucket", cfg.Bucket),
		zap.String("prefix", cfg.Prefix))
	return &sharedRemote{remote: r, key: remoteKeyOf(cfg)}, nil
}
