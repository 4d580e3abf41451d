package registry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
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

	memory    *memoryCache
	accepts   acceptSets
	tagFlight singleflight.Group
	// verdictTTL is how long an access the upstream confirmed for a
	// client is trusted without asking again (verdictTTL by default).
	verdictTTL time.Duration

	// Verdicts are the accesses the upstream confirmed for client
	// identities (identity, repository, digest); shared across reloads.
	Verdicts *tokenauth.Confirmations
}

// memoryCacheSize bounds the small entries (manifests, configs) kept in
// memory beside the store.
const memoryCacheSize = 32 << 20

// NewCache returns the registry cache over store. verdicts may be shared
// with other caches over the same store; nil makes a private one.
func NewCache(store *blobcache.Store, tagTTL time.Duration, verdicts *tokenauth.Confirmations) *Cache {
	if verdicts == nil {
		verdicts = tokenauth.NewConfirmations(offlineAccessWindow)
	}
	return &Cache{Store: store, TagTTL: tagTTL, memory: newMemoryCache(memoryCacheSize), verdictTTL: verdictTTL, Verdicts: verdicts}
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

// remoteWait bounds what a request waits for the shared tier's answer
// before the upstream is asked instead (the store bounds its own calls
// too).
const remoteWait = 5 * time.Second

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

// detached returns a context that keeps ctx's values but not its
// cancellation, canceled after timeout unless stop is called first. Once
// stop is called the context lives on, so a response body read after it
// is not cut.
func detached(ctx context.Context, timeout time.Duration) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	timer := time.AfterFunc(timeout, cancel)
	return ctx, func() { timer.Stop() }
}

// verdictTTL is how long a client identity's access to a repository,
// checked with the upstream, is trusted without asking again;
// offlineAccessWindow is how long it still counts when the upstream cannot
// be asked (stale-if-error for access, as for tags). It matches the token
// endpoint's offline window.
const (
	verdictTTL          = time.Minute
	offlineAccessWindow = 24 * time.Hour
)

// serveCached answers a request by digest from the cache, if the entry is
// there: the content, or the refusal when this identity may not read it.
func (p *Proxy) serveCached(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant) bool {
	h, ok := p.Cache.lookup(req.Digest)
	if !ok {
		return false
	}
	defer h.Close()
	if p.mayRead(w, r, t, req, grant, req.Digest) {
		serveHit(w, r, t, h, resultHit)
	}
	return true
}

// setEntryHeaders sets the headers of content served as an entry (from
// the cache, a fill, or passed through); the caller sets its outcome.
func setEntryHeaders(h http.Header, d digest.Digest, mediaType string) {
	if mediaType == "" {
		mediaType = "application/octet-stream"
	}
	h.Set("Content-Type", mediaType)
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	h.Set("Etag", `"`+d.String()+`"`)
}

// serveHit serves a cached entry. A plain GET of a file over HTTP/1.1
// without TLS goes to the connection with sendfile; everything else (Range,
// conditional requests, TLS, HTTP/2, entries in memory) through
// http.ServeContent.
func serveHit(w http.ResponseWriter, r *http.Request, t target, h *hit, res Result) {
	setEntryHeaders(w.Header(), h.Digest, h.MediaType)
	setOutcome(w, t, res)
	if h.blob == nil {
		http.ServeContent(bodyWriter{w}, r, "", h.modTime, bytes.NewReader(h.body))
		return
	}
	if wholeFileRequest(r) {
		if rf, ok := w.(io.ReaderFrom); ok {
			hdr := w.Header()
			hdr.Set("Accept-Ranges", "bytes")
			hdr.Set("Last-Modified", h.modTime.UTC().Format(http.TimeFormat))
			hdr.Set("Content-Length", strconv.FormatInt(h.Size, 10))
			w.WriteHeader(http.StatusOK)
			// The file itself, not a reader around it: the
			// connection copies it with sendfile. A failure here
			// is the client's (the file is complete).
			_, _ = rf.ReadFrom(h.blob.File)
			return
		}
	}
	http.ServeContent(bodyWriter{w}, r, "", h.modTime, h.blob.File)
}

// wholeFileRequest reports whether r is a plain GET of a whole entry over
// a connection that can use sendfile (HTTP/1.1 without TLS).
func wholeFileRequest(r *http.Request) bool {
	if r.Method != http.MethodGet || r.TLS != nil || r.ProtoMajor != 1 {
		return false
	}
	for _, k := range []string{"Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"} {
		if r.Header.Get(k) != "" {
			return false
		}
	}
	return true
}

// bodyWriter is a ResponseWriter whose ReadFrom copies with a pooled
// buffer. Caddy's idle-timeout writer splits ReadFrom into chunks, and for
// any source but a file on a plain connection the standard library's
// fallback allocates a new buffer per chunk: half a byte per byte served.
type bodyWriter struct{ http.ResponseWriter }

func (w bodyWriter) ReadFrom(r io.Reader) (int64, error) {
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	return io.CopyBuffer(writeOnly{w.ResponseWriter}, r, *buf)
}

// writeOnly hides every method of a writer but Write.
type writeOnly struct{ io.Writer }
