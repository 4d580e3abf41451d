package registry

import (
	"context"
	"io"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// Cache is the registry side of the content-addressed cache: which
// requests it answers, how tags stay fresh, and who may read what.
type Cache struct {
	Store *blobcache.Store
	// TagTTL is how long a tag's digest is served without asking the
	// upstream; after it, a HEAD revalidates it.
	TagTTL time.Duration
	// NegativeTTL is how long the upstream's 404 for a tag is answered
	// without asking again, per identity (negative.go); 0 is never.
	NegativeTTL time.Duration

	memory    *memoryCache
	accepts   acceptSets
	tagFlight singleflight.Group
	negatives negativeTags
	// confirmationTTL is how long the upstream's confirmation of a
	// client's own access is trusted without asking again: the
	// confirmationTTL constant (tests set it to 0 to make every check ask).
	confirmationTTL time.Duration

	// Confirmed holds the accesses the upstream confirmed for client
	// identities (identity, repository, digest or tag); shared across
	// reloads.
	Confirmed *tokenauth.Confirmations

	// Now is the clock of tag freshness and access confirmations; nil
	// is time.Now. Tests set it to move time forward without waiting.
	Now func() time.Time
}

// now is c's clock: Now, or time.Now.
func (c *Cache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// memoryCacheSize bounds the small entries (manifests, configs) held in
// memory beside the store.
const memoryCacheSize = 32 << 20

// NewCache returns the registry cache over store. confirmed may be shared
// with other caches over the same store; nil makes a private one.
func NewCache(store *blobcache.Store, tagTTL time.Duration, confirmed *tokenauth.Confirmations) *Cache {
	if confirmed == nil {
		confirmed = tokenauth.NewConfirmations(tokenauth.OfflineWindow)
	}
	return &Cache{Store: store, TagTTL: tagTTL, memory: newMemoryCache(memoryCacheSize), confirmationTTL: confirmationTTL, Confirmed: confirmed}
}

// setTag records a tag and which Accept set it was made for.
func (c *Cache) setTag(key string, tag blobcache.Tag) {
	if err := c.Store.SetTag(key, tag); err != nil {
		return
	}
	if i := strings.LastIndexByte(key, 0); i > 0 {
		c.accepts.add(key[:i], key[i+1:])
	}
}

// hit is a cached entry ready to serve: small ones from memory, others
// from their file (sendfile).
type hit struct {
	blobcache.Info
	modTime time.Time
	body    []byte
	blob    *blobcache.Blob
}

func (h *hit) Close() {
	if h.blob != nil {
		h.blob.Close()
	}
}

// sizeOf is the size of the cached entry d, or -1 when neither memory nor
// the store holds it committed (a fill in progress).
func (c *Cache) sizeOf(d digest.Digest) int64 {
	if e, ok := c.memory.get(d); ok {
		return int64(len(e.body))
	}
	if info, err := c.Store.Stat(d); err == nil {
		return info.Size
	}
	return -1
}

// lookup finds d in memory or in the store.
func (c *Cache) lookup(d digest.Digest) (*hit, bool) {
	if e, ok := c.memory.get(d); ok {
		return &hit{Info: blobcache.Info{Digest: d, Size: int64(len(e.body)), MediaType: e.mediaType}, modTime: e.modTime, body: e.body}, true
	}
	b, err := c.Store.Get(d)
	if err != nil {
		return nil, false
	}
	if b.Size <= memoryEntryMax {
		body := make([]byte, b.Size)
		if _, err := b.File.ReadAt(body, 0); err == nil || (err == io.EOF && b.Size == 0) {
			c.memory.add(&memoryEntry{digest: d, mediaType: b.MediaType, body: body, modTime: b.ModTime})
			b.Close()
			return &hit{Info: b.Info, modTime: b.ModTime, body: body}, true
		}
	}
	return &hit{Info: b.Info, modTime: b.ModTime, blob: b}, true
}

// sharedTierWait bounds what a request waits for the shared tier's answer
// before the upstream is asked instead (the store bounds its own calls
// too).
const sharedTierWait = 5 * time.Second

// maxManifestSize is the largest manifest the proxy reads into memory
// (distribution's own limit).
const maxManifestSize = 4 << 20

// upstreamAnswerTimeout bounds the wait for an upstream's response headers
// in requests shared by several clients; revalidationTimeout is shorter
// because a stale answer is at hand.
const (
	upstreamAnswerTimeout = time.Minute
	revalidationTimeout   = 10 * time.Second
)

// detached returns a context that carries ctx's values but not its
// cancellation, canceled after timeout unless stop is called first. Once
// stop is called the context lives on, so a response body read after it
// is not cut. Its cause, once the timeout cancels it, is
// context.DeadlineExceeded: the upstream did not answer in time, which
// tells an unreachable upstream from a client that left.
func detached(ctx context.Context, timeout time.Duration) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	timer := time.AfterFunc(timeout, func() { cancel(context.DeadlineExceeded) })
	return ctx, func() { timer.Stop() }
}
