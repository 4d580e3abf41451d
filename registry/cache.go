package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
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
	tagFlight singleflight.Group

	mu       sync.Mutex
	verdicts map[string]time.Time // identity+scope+digest -> until
}

// memoryCacheSize bounds the small entries (manifests, configs) kept in
// memory beside the store.
const memoryCacheSize = 32 << 20

// NewCache returns the registry cache over store.
func NewCache(store *blobcache.Store, tagTTL time.Duration) *Cache {
	return &Cache{Store: store, TagTTL: tagTTL, memory: newMemoryCache(memoryCacheSize)}
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

// Cache-Status values (RFC 9211) of the proxy's responses.
const (
	statusHit       = "docker_proxy; hit"
	statusMiss      = "docker_proxy; fwd=miss"
	statusJoined    = "docker_proxy; fwd=miss; collapsed"
	statusBypass    = "docker_proxy; fwd=bypass"
	statusNoStore   = "docker_proxy; fwd=bypass; detail=cache-unavailable"
	statusRevalided = "docker_proxy; fwd=stale; fwd-status=200"
)

func statusStale(upstreamStatus int) string {
	if upstreamStatus == 0 {
		return "docker_proxy; fwd=stale; detail=stale-if-error"
	}
	return "docker_proxy; fwd=stale; fwd-status=" + strconv.Itoa(upstreamStatus) + "; detail=stale-if-error"
}

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
// checked with the upstream, is remembered.
const verdictTTL = time.Minute

// accessScope names a repository of an upstream for access records.
func accessScope(t target, name string) string { return t.up.String() + "/" + name }

// identityKey names an identity without holding its secret.
func identityKey(g tokenauth.Grant) string {
	if g.Anonymous() {
		return "proxy"
	}
	sum := sha256.Sum256([]byte(g.Authorization))
	return hex.EncodeToString(sum[:16])
}

// serveManifest answers GET and HEAD of a manifest by tag or digest.
func (p *Proxy) serveManifest(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant) {
	if p.Cache == nil {
		p.forward(w, r, t, req, grant, statusBypass)
		return
	}
	if req.Tag != "" {
		p.serveTag(w, r, t, req, grant)
		return
	}
	p.serveManifestByDigest(w, r, t, req, grant)
}

func (p *Proxy) serveManifestByDigest(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant) {
	c := p.Cache
	if h, ok := c.lookup(req.Digest); ok {
		defer h.Close()
		if p.mayRead(w, r, t, req, grant, req.Digest) {
			serveHit(w, r, h, statusHit)
		}
		return
	}
	if r.Method == http.MethodHead {
		p.forward(w, r, t, req, grant, statusMiss)
		return
	}
	m, reply, err := p.fetchManifest(r, t, req, grant, req.Digest.String())
	if err != nil {
		p.writeUpstreamError(w, t, err)
		return
	}
	if reply != nil {
		p.relay(w, r, t, req, reply, statusMiss)
		return
	}
	if m.digest != req.Digest {
		p.writeUpstreamError(w, t, fmt.Errorf("manifest %s: upstream sent content with digest %s", req.Digest, m.digest))
		return
	}
	p.storeManifest(t, req, grant, m)
	writeManifest(w, r, m, statusMiss)
}

// manifest is a manifest read from the upstream.
type manifest struct {
	digest    digest.Digest
	mediaType string
	body      []byte
}

// fetchManifest GETs a manifest by tag or digest. A non-200 answer comes
// back as reply (for relaying); the digest is computed from the bytes and
// checked against the upstream's Docker-Content-Digest.
func (p *Proxy) fetchManifest(r *http.Request, t target, req Request, grant tokenauth.Grant, ref string) (manifest, *http.Response, error) {
	get := req
	get.Tag, get.Digest = "", ""
	if d, err := digest.Parse(ref); err == nil {
		get.Digest = d
	} else {
		get.Tag = ref
	}
	o := outbound{method: http.MethodGet, path: upstreamPath(get), header: forwardHeaders(r, req), scope: "repository:" + req.Name + ":pull"}
	resp, err := p.Upstream.Do(r.Context(), t.up, grant, o)
	if err != nil {
		return manifest{}, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return manifest{}, resp, nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return manifest{}, nil, fmt.Errorf("reading manifest: %w", err)
	}
	if len(body) > maxManifestSize {
		return manifest{}, nil, fmt.Errorf("manifest larger than %d bytes", maxManifestSize)
	}
	alg := digest.Canonical
	if get.Digest != "" {
		alg = get.Digest.Algorithm()
	}
	m := manifest{digest: alg.FromBytes(body), mediaType: resp.Header.Get("Content-Type"), body: body}
	if claimed := resp.Header.Get("Docker-Content-Digest"); claimed != "" {
		if cd, err := digest.Parse(claimed); err == nil && cd.Algorithm() == alg && cd != m.digest {
			return manifest{}, nil, fmt.Errorf("manifest %s: upstream's Docker-Content-Digest %s does not match the bytes (%s)", ref, cd, m.digest)
		}
	}
	return m, nil, nil
}

// storeManifest keeps m; what the proxy fetched with its own identity is
// readable by every client of the route.
func (p *Proxy) storeManifest(t target, req Request, grant tokenauth.Grant, m manifest) {
	c := p.Cache
	if err := c.Store.Put(m.digest, m.mediaType, m.body); err != nil {
		p.Logger.Debug("manifest not cached", zap.String("digest", m.digest.String()), zap.Error(err))
		return
	}
	c.memory.add(&memoryEntry{digest: m.digest, mediaType: m.mediaType, body: m.body, modTime: time.Now()})
	if grant.Anonymous() {
		_ = c.Store.Allow(m.digest, accessScope(t, req.Name))
	} else {
		c.remember(grant, accessScope(t, req.Name), m.digest)
	}
}

func writeManifest(w http.ResponseWriter, r *http.Request, m manifest, cacheStatus string) {
	h := w.Header()
	setEntryHeaders(h, m.digest, m.mediaType, cacheStatus)
	h.Set("Content-Length", strconv.Itoa(len(m.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(m.body)
	}
}

func setEntryHeaders(h http.Header, d digest.Digest, mediaType, cacheStatus string) {
	if mediaType == "" {
		mediaType = "application/octet-stream"
	}
	h.Set("Content-Type", mediaType)
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Cache-Status", cacheStatus)
}

// serveHit serves a cached entry: Range, If-None-Match and (from a file)
// sendfile come from http.ServeContent.
func serveHit(w http.ResponseWriter, r *http.Request, h *hit, cacheStatus string) {
	setEntryHeaders(w.Header(), h.Digest, h.MediaType, cacheStatus)
	if h.blob != nil {
		http.ServeContent(w, r, "", h.modTime, h.blob.File)
		return
	}
	http.ServeContent(w, r, "", h.modTime, bytes.NewReader(h.body))
}

// tagKey names a tag record. The client's Accept is part of it because
// the upstream's answer depends on it (an index, or one platform's
// manifest for clients that do not accept indexes).
func tagKey(t target, req Request, r *http.Request) string {
	return t.up.String() + "\x00" + req.Name + "\x00" + req.Tag + "\x00" + acceptKey(r.Header.Values("Accept"))
}

// acceptKey normalises Accept values: media types without parameters,
// lower case, sorted, de-duplicated.
func acceptKey(values []string) string {
	seen := map[string]bool{}
	var types []string
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || seen[mt] {
				continue
			}
			seen[mt] = true
			types = append(types, mt)
		}
	}
	sort.Strings(types)
	return strings.Join(types, ",")
}

// tagResult is what one upstream round for a tag produced, shared by all
// requests that waited for it.
type tagResult struct {
	tag blobcache.Tag
	// reply is the upstream's non-200 answer (status, headers, small body).
	reply *storedReply
	// upstreamStatus is set when the upstream failed (429, 5xx): callers
	// fall back to the stale record.
	upstreamStatus int
	err            error
}

// storedReply is an upstream answer kept in memory so that every request
// that shared the upstream round can relay it.
type storedReply struct {
	status int
	header http.Header
	body   []byte
}

func (s *storedReply) response() *http.Response {
	return &http.Response{StatusCode: s.status, Header: s.header.Clone(), Body: io.NopCloser(bytes.NewReader(s.body))}
}

func keepReply(resp *http.Response) *storedReply {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return &storedReply{status: resp.StatusCode, header: resp.Header.Clone(), body: body}
}

// serveTag answers a manifest request by tag: from the tag record while
// it is fresh, after a HEAD once it is stale (stale-if-error when the
// upstream fails), from the upstream on a miss. Concurrent requests of one
// identity share one upstream round.
func (p *Proxy) serveTag(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant) {
	c := p.Cache
	key := tagKey(t, req, r)
	rec, known := c.Store.Tag(key)
	if known && time.Since(rec.Checked) < c.TagTTL {
		if p.serveTagRecord(w, r, t, req, grant, rec, statusHit) {
			return
		}
	}
	flight := c.tagFlight.DoChan(key+"\x00"+identityKey(grant)+"\x00"+r.Method, func() (any, error) {
		// Shared by every request of this identity for the tag: it must
		// not end with the first one's. A revalidation that takes too
		// long counts as an upstream failure (stale-if-error).
		timeout := upstreamAnswerTimeout
		if known {
			timeout = revalidationTimeout
		}
		ctx, stop := detached(r.Context(), timeout)
		defer stop()
		shared := r.WithContext(ctx)
		if known {
			return p.revalidateTag(shared, t, req, grant, key, rec), nil
		}
		return p.fetchTag(shared, t, req, grant, key), nil
	})
	var res tagResult
	select {
	case v := <-flight:
		res = v.Val.(tagResult)
	case <-r.Context().Done():
		return
	}
	switch {
	case res.reply != nil:
		p.relay(w, r, t, req, res.reply.response(), statusMiss)
	case res.err != nil || res.upstreamStatus != 0:
		if known && p.serveTagRecord(w, r, t, req, grant, rec, statusStale(res.upstreamStatus)) {
			p.Logger.Info("served a stale tag: upstream failed",
				zap.String("upstream", t.up.Name), zap.String("repository", req.Name), zap.String("tag", req.Tag),
				zap.Int("upstream_status", res.upstreamStatus), zap.Error(res.err))
			return
		}
		if res.err == nil {
			res.err = &upstreamStatusError{status: res.upstreamStatus}
		}
		p.writeUpstreamError(w, t, res.err)
	default:
		status := statusMiss
		if known && res.tag.Digest == rec.Digest {
			status = statusRevalided
		}
		if !p.serveTagRecord(w, r, t, req, grant, res.tag, status) {
			p.writeUpstreamError(w, t, errors.New("manifest vanished from the cache"))
		}
	}
}

// revalidateTag asks the upstream with a HEAD (which Docker Hub does not
// count) whether the tag still points at rec's digest.
func (p *Proxy) revalidateTag(r *http.Request, t target, req Request, grant tokenauth.Grant, key string, rec blobcache.Tag) tagResult {
	o := outbound{method: http.MethodHead, path: upstreamPath(req), header: forwardHeaders(r, req), scope: "repository:" + req.Name + ":pull"}
	resp, err := p.Upstream.Do(r.Context(), t.up, grant, o)
	if err != nil {
		return tagResult{err: err}
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		drain(resp.Body)
		return tagResult{upstreamStatus: resp.StatusCode}
	case resp.StatusCode != http.StatusOK:
		return tagResult{reply: keepReply(resp)}
	}
	drain(resp.Body)
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		// No usable digest in the HEAD: fetch the tag itself.
		return p.fetchTag(r, t, req, grant, key)
	}
	scope := accessScope(t, req.Name)
	if d == rec.Digest || p.Cache.Store.Contains(d) {
		// Unchanged, or changed to something already cached: no GET.
		// The HEAD just proved this identity may read the tag.
		size, _ := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
		tag := blobcache.Tag{Digest: d, MediaType: resp.Header.Get("Content-Type"), Size: size, Checked: time.Now()}
		if d == rec.Digest {
			tag.MediaType, tag.Size = rec.MediaType, rec.Size
		}
		p.grantRead(grant, scope, d)
		_ = p.Cache.Store.SetTag(key, tag)
		return tagResult{tag: tag}
	}
	if r.Method == http.MethodHead {
		// A HEAD needs no body: answer from the upstream's headers and
		// leave the GET (which Docker Hub counts) to a GET.
		size, _ := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
		tag := blobcache.Tag{Digest: d, MediaType: resp.Header.Get("Content-Type"), Size: size, Checked: time.Now()}
		p.grantRead(grant, scope, d)
		_ = p.Cache.Store.SetTag(key, tag)
		return tagResult{tag: tag}
	}
	return p.fetchTagByDigest(r, t, req, grant, key, d)
}

// fetchTag resolves a tag the cache does not know: GET (HEAD for a HEAD).
func (p *Proxy) fetchTag(r *http.Request, t target, req Request, grant tokenauth.Grant, key string) tagResult {
	if r.Method == http.MethodHead {
		o := outbound{method: http.MethodHead, path: upstreamPath(req), header: forwardHeaders(r, req), scope: "repository:" + req.Name + ":pull"}
		resp, err := p.Upstream.Do(r.Context(), t.up, grant, o)
		if err != nil {
			return tagResult{err: err}
		}
		if resp.StatusCode != http.StatusOK {
			return tagResult{reply: keepReply(resp)}
		}
		drain(resp.Body)
		d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
		if err != nil {
			return tagResult{err: fmt.Errorf("upstream HEAD of %s:%s has no valid Docker-Content-Digest", req.Name, req.Tag)}
		}
		size, _ := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
		tag := blobcache.Tag{Digest: d, MediaType: resp.Header.Get("Content-Type"), Size: size, Checked: time.Now()}
		p.grantRead(grant, accessScope(t, req.Name), d)
		_ = p.Cache.Store.SetTag(key, tag)
		return tagResult{tag: tag}
	}
	m, reply, err := p.fetchManifest(r, t, req, grant, req.Tag)
	if err != nil {
		return tagResult{err: err}
	}
	if reply != nil {
		if reply.StatusCode == http.StatusTooManyRequests || reply.StatusCode >= 500 {
			drain(reply.Body)
			return tagResult{upstreamStatus: reply.StatusCode}
		}
		return tagResult{reply: keepReply(reply)}
	}
	return p.keepTag(t, req, grant, key, m)
}

func (p *Proxy) fetchTagByDigest(r *http.Request, t target, req Request, grant tokenauth.Grant, key string, d digest.Digest) tagResult {
	m, reply, err := p.fetchManifest(r, t, req, grant, d.String())
	if err != nil {
		return tagResult{err: err}
	}
	if reply != nil {
		if reply.StatusCode == http.StatusTooManyRequests || reply.StatusCode >= 500 {
			drain(reply.Body)
			return tagResult{upstreamStatus: reply.StatusCode}
		}
		return tagResult{reply: keepReply(reply)}
	}
	if m.digest != d {
		return tagResult{err: fmt.Errorf("manifest %s: upstream sent content with digest %s", d, m.digest)}
	}
	return p.keepTag(t, req, grant, key, m)
}

func (p *Proxy) keepTag(t target, req Request, grant tokenauth.Grant, key string, m manifest) tagResult {
	p.storeManifest(t, req, grant, m)
	tag := blobcache.Tag{Digest: m.digest, MediaType: m.mediaType, Size: int64(len(m.body)), Checked: time.Now()}
	if !p.Cache.Store.Contains(m.digest) {
		// The store could not keep it (disk full, unwritable): still
		// answer this round from memory.
		return tagResult{tag: tag, err: nil, reply: &storedReply{status: http.StatusOK, header: manifestHeader(m), body: m.body}}
	}
	if err := p.Cache.Store.SetTag(key, tag); err != nil {
		p.Logger.Debug("tag not recorded", zap.Error(err))
	}
	return tagResult{tag: tag}
}

func manifestHeader(m manifest) http.Header {
	h := http.Header{}
	setEntryHeaders(h, m.digest, m.mediaType, statusNoStore)
	h.Set("Content-Length", strconv.Itoa(len(m.body)))
	return h
}

// serveTagRecord answers from a tag record if the cache has what it
// needs and the identity may read it; false means "not answered".
func (p *Proxy) serveTagRecord(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant, tag blobcache.Tag, cacheStatus string) bool {
	c := p.Cache
	h, ok := c.lookup(tag.Digest)
	if !ok {
		if r.Method != http.MethodHead || tag.Size <= 0 || !p.mayReadQuiet(r, t, req, grant, tag.Digest) {
			return false
		}
		// A HEAD is answered from the record alone.
		setEntryHeaders(w.Header(), tag.Digest, tag.MediaType, cacheStatus)
		w.Header().Set("Content-Length", strconv.FormatInt(tag.Size, 10))
		w.WriteHeader(http.StatusOK)
		return true
	}
	defer h.Close()
	if p.mayRead(w, r, t, req, grant, tag.Digest) {
		serveHit(w, r, h, cacheStatus)
	}
	return true
}

// grantRead records that grant's identity may read d in scope.
func (p *Proxy) grantRead(grant tokenauth.Grant, scope string, d digest.Digest) {
	if grant.Anonymous() {
		_ = p.Cache.Store.Allow(d, scope)
	} else {
		p.Cache.remember(grant, scope, d)
	}
}

func (c *Cache) remember(grant tokenauth.Grant, scope string, d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.verdicts == nil {
		c.verdicts = map[string]time.Time{}
	}
	now := time.Now()
	if len(c.verdicts) > 10000 {
		for k, until := range c.verdicts {
			if now.After(until) {
				delete(c.verdicts, k)
			}
		}
	}
	c.verdicts[identityKey(grant)+"\x00"+scope+"\x00"+d.String()] = now.Add(verdictTTL)
}

func (c *Cache) remembered(grant tokenauth.Grant, scope string, d digest.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.verdicts[identityKey(grant)+"\x00"+scope+"\x00"+d.String()]
	return ok && time.Now().Before(until)
}

// mayRead decides whether grant's identity may read cached content d of
// req's repository, and if not, answers the request (401 with the proxy's
// challenge, the upstream's 404, or 503 when the upstream cannot be asked).
// The cache never widens access: content is served to every client of a
// route only if the proxy's own identity could read it in that repository;
// anything else needs the upstream to accept this identity (a HEAD, which
// Docker Hub does not count).
func (p *Proxy) mayRead(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant, d digest.Digest) bool {
	ok, resp, err := p.checkAccess(r, t, req, grant, d)
	switch {
	case ok:
		return true
	case resp != nil:
		// The upstream's answer was to a HEAD: answer this request
		// with the registry error that status means.
		drain(resp.Body)
		p.writeDenied(w, r, t, req, resp)
	default:
		WriteError(w, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: "the upstream registry cannot confirm access to " + req.Name + " right now: " + err.Error()})
	}
	return false
}

func (p *Proxy) mayReadQuiet(r *http.Request, t target, req Request, grant tokenauth.Grant, d digest.Digest) bool {
	ok, resp, _ := p.checkAccess(r, t, req, grant, d)
	if resp != nil {
		drain(resp.Body)
	}
	return ok
}

func (p *Proxy) checkAccess(r *http.Request, t target, req Request, grant tokenauth.Grant, d digest.Digest) (bool, *http.Response, error) {
	c := p.Cache
	scope := accessScope(t, req.Name)
	if c.Store.Allowed(d, scope) || c.remembered(grant, scope, d) {
		return true, nil, nil
	}
	check := req
	check.Tag, check.Digest = "", d
	if req.Kind != KindBlob {
		check.Kind = KindManifest
	}
	o := outbound{method: http.MethodHead, path: upstreamPath(check), header: forwardHeaders(r, req), scope: "repository:" + req.Name + ":pull", followRedirects: false}
	if o.header.Get("Accept") == "" && check.Kind == KindManifest {
		o.header.Set("Accept", "*/*")
	}
	resp, err := p.Upstream.Do(r.Context(), t.up, grant, o)
	if err != nil {
		return false, nil, err
	}
	switch {
	case resp.StatusCode < 400:
		drain(resp.Body)
		p.grantRead(grant, scope, d)
		return true, nil, nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusNotFound:
		return false, resp, nil
	default:
		drain(resp.Body)
		return false, nil, &upstreamStatusError{status: resp.StatusCode}
	}
}

// serveBlob answers GET and HEAD of a blob: hits from the file, misses
// through one shared fill per digest that streams to every reader.
func (p *Proxy) serveBlob(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant) {
	c := p.Cache
	if c == nil {
		p.forward(w, r, t, req, grant, statusBypass)
		return
	}
	if h, ok := c.lookup(req.Digest); ok {
		defer h.Close()
		if p.mayRead(w, r, t, req, grant, req.Digest) {
			serveHit(w, r, h, statusHit)
		}
		return
	}
	if r.Method == http.MethodHead {
		p.forward(w, r, t, req, grant, statusMiss)
		return
	}
	fill, leader := c.Store.Join(req.Digest)
	if !leader {
		// Someone else's fill: this identity must be allowed too.
		if !p.mayRead(w, r, t, req, grant, req.Digest) {
			return
		}
		rd, err := fill.Reader(r.Context())
		if err != nil {
			// The fill never started (the leader's upstream request
			// failed): ask the upstream ourselves.
			p.forward(w, r, t, req, grant, statusMiss)
			return
		}
		serveReader(w, r, rd, statusJoined)
		return
	}
	o := outbound{method: http.MethodGet, path: upstreamPath(req), header: forwardHeaders(r, req), scope: "repository:" + req.Name + ":pull", followRedirects: true}
	o.header.Del("Range") // the fill fetches the whole blob; ranges are served from it
	// The fill outlives this request (others join it, and it finishes the
	// entry if they all leave), so the upstream request must not end with
	// this client's; the store closes the body when the fill is abandoned.
	ctx, stop := detached(r.Context(), upstreamAnswerTimeout)
	resp, err := p.Upstream.Do(ctx, t.up, grant, o)
	stop()
	if err != nil {
		fill.Fail(err)
		p.writeUpstreamError(w, t, err)
		return
	}
	if resp.StatusCode != http.StatusOK {
		fill.Fail(fmt.Errorf("upstream answered %d", resp.StatusCode))
		p.relay(w, r, t, req, resp, statusMiss)
		return
	}
	if grant.Anonymous() {
		_ = c.Store.Allow(req.Digest, accessScope(t, req.Name))
	}
	src := blobcache.Source{Body: resp.Body, Size: resp.ContentLength, MediaType: blobMediaType(resp)}
	if err := fill.Start(src); err != nil {
		// The cache cannot take it (disk full, unwritable): pass the
		// bytes through as they come.
		p.Logger.Debug("blob not cached", zap.String("digest", req.Digest.String()), zap.Error(err))
		h := w.Header()
		setEntryHeaders(h, req.Digest, src.MediaType, statusNoStore)
		if resp.ContentLength >= 0 {
			h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
		}
		w.WriteHeader(http.StatusOK)
		copyBody(w, resp.Body)
		resp.Body.Close()
		return
	}
	rd, err := fill.Reader(r.Context())
	if err != nil {
		p.writeUpstreamError(w, t, err)
		return
	}
	if !grant.Anonymous() {
		c.remember(grant, accessScope(t, req.Name), req.Digest)
	}
	serveReader(w, r, rd, statusMiss)
}

func blobMediaType(resp *http.Response) string {
	ct := resp.Header.Get("Content-Type")
	if ct == "" || strings.HasPrefix(ct, "binary/") {
		return "application/octet-stream"
	}
	return ct
}

// serveReader serves a fill in progress. A failed fill (upstream cut,
// wrong bytes) aborts the client's connection: never a clean end.
func serveReader(w http.ResponseWriter, r *http.Request, rd *blobcache.Reader, cacheStatus string) {
	defer rd.Close()
	info := rd.Info()
	setEntryHeaders(w.Header(), info.Digest, info.MediaType, cacheStatus)
	er := &errorRecorder{r: rd}
	if info.Size < 0 {
		w.WriteHeader(http.StatusOK)
		copyBody(w, er)
		return
	}
	http.ServeContent(w, r, "", time.Time{}, er)
	if er.err != nil {
		panic(http.ErrAbortHandler)
	}
}

// errorRecorder remembers a read error, which http.ServeContent swallows.
type errorRecorder struct {
	r   io.ReadSeeker
	err error
}

func (e *errorRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

func (e *errorRecorder) Seek(offset int64, whence int) (int64, error) {
	n, err := e.r.Seek(offset, whence)
	if err != nil {
		e.err = err
	}
	return n, err
}

// writeDenied answers a request the upstream refused for this identity.
func (p *Proxy) writeDenied(w http.ResponseWriter, r *http.Request, t target, req Request, resp *http.Response) {
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		errParam := ""
		if ch := pickChallenge(resp.Header); ch != nil {
			errParam = ch.Params["error"]
		}
		p.writeChallenge(w, r, t, req, errParam)
	case http.StatusForbidden:
		WriteError(w, &Error{Status: http.StatusForbidden, Code: CodeDenied, Message: "access to " + req.Name + " denied by the upstream registry"})
	default:
		code := CodeManifestUnknown
		if req.Kind == KindBlob {
			code = CodeBlobUnknown
		}
		WriteError(w, &Error{Status: http.StatusNotFound, Code: code, Message: req.Reference() + " is not in " + req.Name})
	}
}
