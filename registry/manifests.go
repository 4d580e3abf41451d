package registry

// Manifests by digest: from the cache, else the shared tier, else one
// upstream GET per identity, checked against the digest and stored. Tags
// resolve to digests in tags.go.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

// serveManifest answers GET and HEAD of a manifest by tag or digest.
func (c *pull) serveManifest() {
	if c.p.Cache == nil {
		c.forward(resultBypass)
		return
	}
	if c.path.Tag != "" {
		c.serveTag()
		return
	}
	c.serveManifestByDigest()
}

func (c *pull) serveManifestByDigest() {
	if c.serveCached() {
		return
	}
	if c.r.Method == http.MethodHead {
		// A HEAD needs no bytes: ask the upstream rather than fill.
		c.forward(resultMiss)
		return
	}
	res, ok := c.fetchByDigest(c.path.Digest)
	switch {
	case !ok:
		return // the client left
	case res.reply != nil:
		c.relay(res.reply.response(), res.reply.outcomeOr(resultMiss))
	case res.err != nil:
		c.writeUpstreamError(res.err)
	case res.shared, res.cached:
		// Another instance or another round fetched it, maybe with
		// other credentials.
		if !c.denyUnreadable(c.path.Digest) {
			served := resultShared
			if res.cached {
				served = resultHit
			}
			c.writeManifest(res.m, served)
		}
	default:
		c.writeManifest(res.m, resultMiss)
	}
}

// digestResult is a manifest fetched by digest, or why not.
type digestResult struct {
	m     manifest
	reply *bufferedReply // the upstream's non-200 answer
	err   error
	// shared: m came from the shared tier, not from the upstream with
	// this identity, which may still have to be allowed to read it.
	shared bool
	// cached: m was in the cache already, stored by a round that ended
	// just before this one began; access is to be checked as for shared.
	cached bool
}

// fetchByDigest gets a manifest by digest from the shared tier or else
// GETs it, checks and stores it, once for any number of concurrent
// requests of one identity (Docker Hub counts every GET). ok is false if
// the client left while waiting.
func (c *pull) fetchByDigest(d digest.Digest) (res digestResult, ok bool) {
	p := c.p
	key := "digest\x00" + c.t.up.String() + "\x00" + c.path.Name + "\x00" + d.String() + "\x00" + c.askedAs()
	round := c.detach()
	flight := p.Cache.tagFlight.DoChan(key, func() (any, error) {
		// A round that ended between this request's look at the cache
		// and this one may have stored it already.
		if m, ok := p.cachedManifest(d); ok {
			return digestResult{m: m, cached: true}, nil
		}
		ctx, stop := detached(round.r.Context(), upstreamAnswerTimeout)
		defer stop()
		if m, ok := p.sharedManifest(ctx, d); ok {
			return digestResult{m: m, shared: true}, nil
		}
		round.r = round.r.WithContext(ctx)
		m, reply, err := round.fetchManifest(d.String())
		switch {
		case err != nil:
			return digestResult{err: err}, nil
		case reply != nil:
			return digestResult{reply: bufferReply(reply)}, nil
		case m.digest != d:
			return digestResult{err: errManifestInvalid("manifest %s: upstream sent content with digest %s", d, m.digest)}, nil
		case m.signed:
			return digestResult{reply: passThroughReply(m)}, nil
		}
		if !round.storeManifest(m) {
			return digestResult{reply: manifestReply(m, resultCacheUnavailable)}, nil
		}
		return digestResult{m: m}, nil
	})
	select {
	case v := <-flight:
		return v.Val.(digestResult), true
	case <-c.r.Context().Done():
		return digestResult{}, false
	}
}

// cachedManifest returns manifest d if the cache holds it.
func (p *Proxy) cachedManifest(d digest.Digest) (manifest, bool) {
	h, ok := p.Cache.lookup(d)
	if !ok {
		return manifest{}, false
	}
	defer h.Close()
	body := h.body
	if body == nil {
		if h.Size > maxManifestSize {
			return manifest{}, false
		}
		body = make([]byte, h.Size)
		if _, err := h.blob.File.ReadAt(body, 0); err != nil && !(err == io.EOF && h.Size == 0) {
			return manifest{}, false
		}
	}
	return manifest{digest: d, mediaType: h.MediaType, body: body}, true
}

// sharedManifest copies manifest d from the shared tier into the store, if
// the shared tier has it: verified, with the access scopes recorded with
// it (never more than the instance that uploaded it knew).
func (p *Proxy) sharedManifest(ctx context.Context, d digest.Digest) (manifest, bool) {
	ctx, cancel := context.WithTimeout(ctx, sharedTierWait)
	defer cancel()
	info, body, err := p.Cache.Store.LoadRemote(ctx, d, maxManifestSize)
	if err != nil {
		if !errors.Is(err, blobcache.ErrNotFound) {
			p.Logger.Debug("manifest not taken from the shared tier", zap.String("digest", d.String()), zap.Error(err))
		}
		return manifest{}, false
	}
	p.Cache.memory.add(&memoryEntry{digest: d, mediaType: info.MediaType, body: body, modTime: time.Now()})
	return manifest{digest: d, mediaType: info.MediaType, body: body}, true
}

// manifest is a manifest read from the upstream.
type manifest struct {
	digest    digest.Digest
	mediaType string
	body      []byte
	// signed: a schema 1 signed manifest, whose digest is of its payload,
	// not of body (see schema1.go): passed through, never stored.
	signed bool
}

// fetchManifest GETs a manifest by tag or digest. A non-200 answer comes
// back as reply (for relaying); the digest is computed from the bytes and
// checked against the upstream's Docker-Content-Digest.
func (c *pull) fetchManifest(ref string) (manifest, *http.Response, error) {
	get := c.path
	get.Tag, get.Digest = "", ""
	if d, err := digest.Parse(ref); err == nil {
		get.Digest = d
	} else {
		get.Tag = ref
	}
	resp, err := c.do(outboundFor(c.r, get, http.MethodGet))
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
	cd, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	claimed := err == nil && cd.Algorithm() == alg
	if claimed && cd == m.digest {
		return m, nil, nil // the bytes are what the upstream says
	}
	// A schema 1 signed manifest goes by the digest of its payload
	// (unless the upstream named it by its bytes, as above).
	if payload, ok := schema1Payload(body); ok {
		signed := m
		signed.digest, signed.signed = alg.FromBytes(payload), true
		if !claimed || cd == signed.digest {
			return signed, nil, nil
		}
		return manifest{}, nil, errManifestInvalid("schema 1 manifest %s: upstream's Docker-Content-Digest %s matches neither its bytes (%s) nor its signed payload (%s)", ref, cd, m.digest, signed.digest)
	}
	if claimed {
		return manifest{}, nil, errManifestInvalid("manifest %s: upstream's Docker-Content-Digest %s does not match the bytes (%s)", ref, cd, m.digest)
	}
	return m, nil, nil
}

// storeManifest keeps m; what the proxy fetched with its own identity is
// readable by every client of the route. Its scope goes in with the entry,
// so that the shared tier never receives the manifest without it. false:
// the store could not keep it (disk full, unwritable).
func (c *pull) storeManifest(m manifest) bool {
	cache := c.p.Cache
	var scopes []string
	if c.grant.Anonymous() {
		scopes = append(scopes, accessScope(c.askedAs(), c.t, c.path.Name))
	}
	if err := cache.Store.Put(m.digest, m.mediaType, m.body, scopes...); err != nil {
		c.p.Logger.Debug("manifest not cached", zap.String("digest", m.digest.String()), zap.Error(err))
		return false
	}
	cache.memory.add(&memoryEntry{digest: m.digest, mediaType: m.mediaType, body: m.body, modTime: time.Now()})
	c.confirmRead(m.digest)
	return true
}

func (c *pull) writeManifest(m manifest, res Result) {
	h := c.w.Header()
	setEntryHeaders(h, m.digest, m.mediaType)
	setOutcome(c.w, c.t, res)
	h.Set("Content-Length", strconv.Itoa(len(m.body)))
	c.w.WriteHeader(http.StatusOK)
	if c.r.Method != http.MethodHead {
		_, _ = c.w.Write(m.body)
	}
}

// bufferedReply is an upstream answer held in memory so that every request
// that shared the upstream round can relay it.
type bufferedReply struct {
	status int
	header http.Header
	body   []byte
	// outcome, if set, is the outcome of a reply the proxy made itself (a
	// manifest passed through), not the upstream's answer.
	outcome Result
}

func (s *bufferedReply) outcomeOr(def Result) Result {
	if s.outcome.Outcome != OutcomeNone {
		return s.outcome
	}
	return def
}

func (s *bufferedReply) response() *http.Response {
	return &http.Response{StatusCode: s.status, Header: s.header.Clone(), Body: io.NopCloser(bytes.NewReader(s.body))}
}

func bufferReply(resp *http.Response) *bufferedReply {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return &bufferedReply{status: resp.StatusCode, header: resp.Header.Clone(), body: body}
}

// manifestReply is m as a reply that the proxy makes itself, with outcome
// res: a manifest served as fetched and not kept.
func manifestReply(m manifest, res Result) *bufferedReply {
	h := http.Header{}
	setEntryHeaders(h, m.digest, m.mediaType)
	h.Set("Content-Length", strconv.Itoa(len(m.body)))
	return &bufferedReply{status: http.StatusOK, header: h, body: m.body, outcome: res}
}
