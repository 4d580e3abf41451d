package registry

// Manifests by tag: through a tag record that is fresh for tag_ttl, then
// revalidated with a HEAD, served stale when the upstream fails.

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

// tagKey names a tag record. The client's Accept is part of it because
// the upstream's answer depends on it (an index, or one platform's
// manifest for clients that do not accept indexes).
func (c *pull) tagKey() (key, base, accept string) {
	base = c.t.up.String() + "\x00" + c.path.Name + "\x00" + c.path.Tag
	accept = acceptKey(c.r.Header.Values("Accept"))
	return base + "\x00" + accept, base, accept
}

// tagResult is what one upstream round for a tag produced, shared by all
// requests that waited for it.
type tagResult struct {
	tag blobcache.Tag
	// reply is the upstream's non-200 answer (status, headers, small body).
	reply *bufferedReply
	// upstreamStatus is set when the upstream failed (429, 5xx): callers
	// fall back to the stale record.
	upstreamStatus int
	err            error
	// shared: the manifest came from the shared tier.
	shared bool
	// settled: another round had just settled the tag; nothing was asked.
	settled bool
}

// serveTag answers a manifest request by tag: from the tag record while
// it is fresh, after a HEAD once it is stale (stale-if-error when the
// upstream fails), from the upstream on a miss. Concurrent requests of one
// identity share one upstream round.
func (c *pull) serveTag() {
	cache := c.p.Cache
	key, base, accept := c.tagKey()
	rec, known := cache.Store.Tag(key)
	if !known {
		// Another client's Accept set may have the answer already.
		rec, known = cache.siblingTag(base, accept)
	} else {
		cache.accepts.add(base, accept)
	}
	hitResult := resultHit
	if !known {
		// Another instance may have checked the tag: with a fresh
		// record, N instances cost the upstream one GET.
		if rec, known = c.sharedTierTag(key); known {
			cache.accepts.add(base, accept)
			hitResult = resultShared
		} else {
			// Set here while the shared tier was asked? Then the
			// upstream round that set it must not be made again.
			rec, known = cache.Store.Tag(key)
		}
	}
	fresh := known && cache.now().Sub(rec.Checked) < cache.TagTTL
	if fresh && c.serveTagRecord(rec, hitResult) {
		return
	}
	if c.serveRememberedMissing(key) {
		return
	}
	round := c.detach()
	flight := cache.tagFlight.DoChan(key+"\x00"+c.askedAs()+"\x00"+c.r.Method, func() (any, error) {
		// Shared by every request of this identity for the tag: it must
		// not end with the first one's. A revalidation that takes too
		// long counts as an upstream failure (stale-if-error).
		timeout := upstreamAnswerTimeout
		if known {
			timeout = revalidationTimeout
		}
		// A round that ended between this request's look at the record
		// and this one may have settled the tag already.
		if cur, ok := cache.Store.Tag(key); ok && cache.now().Sub(cur.Checked) < cache.TagTTL &&
			(!known || cur.Checked.After(rec.Checked)) && cache.Store.Contains(cur.Digest) {
			return tagResult{tag: cur, settled: true}, nil
		}
		ctx, stop := detached(round.r.Context(), timeout)
		defer stop()
		round.r = round.r.WithContext(ctx)
		switch {
		case fresh: // the record holds, its manifest is not cached (it came from a HEAD, or was evicted)
			return round.fetchTagByDigest(key, rec.Digest, rec.Checked), nil
		case known:
			return round.revalidateTag(key, rec), nil
		}
		return round.fetchTag(key), nil
	})
	var res tagResult
	select {
	case v := <-flight:
		res = v.Val.(tagResult)
	case <-c.r.Context().Done():
		return
	}
	switch {
	case res.reply != nil:
		if res.reply.status == http.StatusNotFound {
			// The tag does not exist: remembered for negative_ttl, and
			// kept as its last answer for when the upstream fails (a
			// client that looks for a tag and falls back when it is
			// missing, as oras does for sha256-<digest>, then works
			// offline too).
			c.rememberMissing(key)
			c.keepList(http.StatusNotFound, http.Header{}, nil)
		}
		c.relay(res.reply.response(), res.reply.outcomeOr(resultMiss))
	case res.err != nil || res.upstreamStatus != 0:
		if known && !cache.Store.Contains(rec.Digest) {
			// The manifest may be in the shared tier only (the
			// record came from there, or it was evicted here).
			c.p.sharedManifest(c.r.Context(), rec.Digest)
		}
		if known && c.serveTagRecord(rec, resultStale(res.upstreamStatus)) {
			c.p.Logger.Info("served a stale tag: upstream failed",
				zap.String("upstream", c.t.up.Name), zap.String("repository", c.path.Name), zap.String("tag", c.path.Tag),
				zap.Int("upstream_status", res.upstreamStatus), zap.Error(res.err))
			return
		}
		if !known && c.serveKeptList(res.upstreamStatus) {
			return // the tag's last answer: 404
		}
		if res.err == nil {
			res.err = &upstreamStatusError{status: res.upstreamStatus}
		}
		c.writeUpstreamError(res.err)
	default:
		served := resultMiss
		switch {
		case res.settled:
			served = resultHit
		case res.shared:
			served = resultShared
		case known && res.tag.Digest == rec.Digest:
			served = resultRevalidated
		}
		if !c.serveTagRecord(res.tag, served) {
			c.writeUpstreamError(errors.New("manifest vanished from the cache"))
		}
	}
}

// revalidateTag asks the upstream with a HEAD (which Docker Hub does not
// count) whether the tag still points at rec's digest.
func (c *pull) revalidateTag(key string, rec blobcache.Tag) tagResult {
	resp, err := c.do(outboundFor(c.r, c.path, http.MethodHead))
	if err != nil {
		return tagResult{err: err}
	}
	switch {
	case failedStatus(resp.StatusCode):
		drain(resp.Body)
		return tagResult{upstreamStatus: resp.StatusCode}
	case resp.StatusCode != http.StatusOK:
		return tagResult{reply: bufferReply(resp)}
	}
	drain(resp.Body)
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		// No usable digest in the HEAD: fetch the tag itself.
		return c.fetchTag(key)
	}
	if c.p.Cache.Store.Contains(d) || c.r.Method == http.MethodHead {
		// No GET (which Docker Hub counts): the manifest is cached, or
		// a HEAD needs none. The HEAD says where the tag points, not
		// that this identity may read cached content of that digest:
		// serving it is checked by digest (serveTagRecord).
		tag := tagFromHead(resp, d, c.p.Cache.now())
		if d == rec.Digest && rec.Size > 0 {
			tag.MediaType, tag.Size = rec.MediaType, rec.Size
		}
		c.confirmTag()
		c.p.Cache.setTag(key, tag)
		return tagResult{tag: tag}
	}
	return c.fetchTagByDigest(key, d, c.p.Cache.now())
}

// tagFromHead is the tag record an upstream's answer to a HEAD of the tag
// makes: d, with the manifest's media type and size, checked now.
func tagFromHead(resp *http.Response, d digest.Digest, now time.Time) blobcache.Tag {
	size, _ := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
	return blobcache.Tag{Digest: d, MediaType: resp.Header.Get("Content-Type"), Size: size, Checked: now}
}

// fetchTag resolves a tag the cache does not know: GET (HEAD for a HEAD).
func (c *pull) fetchTag(key string) tagResult {
	if c.r.Method == http.MethodHead {
		resp, err := c.do(outboundFor(c.r, c.path, http.MethodHead))
		if err != nil {
			return tagResult{err: err}
		}
		if resp.StatusCode != http.StatusOK {
			return tagResult{reply: bufferReply(resp)}
		}
		if isSchema1Signed(resp.Header.Get("Content-Type")) {
			// Its GET will be passed through, never stored: no record
			// that would send it to the cache (see schema1.go).
			reply := bufferReply(resp)
			reply.outcome = resultSchema1
			return tagResult{reply: reply}
		}
		drain(resp.Body)
		d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
		if err != nil {
			return tagResult{err: fmt.Errorf("upstream HEAD of %s:%s has no valid Docker-Content-Digest", c.path.Name, c.path.Tag)}
		}
		tag := tagFromHead(resp, d, c.p.Cache.now())
		c.confirmTag()
		c.p.Cache.setTag(key, tag)
		return tagResult{tag: tag}
	}
	m, reply, err := c.fetchManifest(c.path.Tag)
	if err != nil {
		return tagResult{err: err}
	}
	if reply != nil {
		if failedStatus(reply.StatusCode) {
			drain(reply.Body)
			return tagResult{upstreamStatus: reply.StatusCode}
		}
		return tagResult{reply: bufferReply(reply)}
	}
	c.confirmTag()
	return c.keepTag(key, m, c.p.Cache.now())
}

// fetchTagByDigest gets the manifest a tag points at; checked is when the
// upstream last confirmed the tag (now, or the record's time when only the
// manifest was missing).
func (c *pull) fetchTagByDigest(key string, d digest.Digest, checked time.Time) tagResult {
	res, ok := c.fetchByDigest(d)
	switch {
	case !ok:
		return tagResult{err: c.r.Context().Err()}
	case res.reply != nil:
		if failedStatus(res.reply.status) {
			return tagResult{upstreamStatus: res.reply.status}
		}
		return tagResult{reply: res.reply}
	case res.err != nil:
		return tagResult{err: res.err}
	case res.shared, res.cached:
		// Stored already, with the shared tier's scopes or by another
		// round: nothing here says this identity may read it
		// (serveTagRecord asks).
		tag := blobcache.Tag{Digest: d, MediaType: res.m.mediaType, Size: int64(len(res.m.body)), Checked: checked}
		c.p.Cache.setTag(key, tag)
		return tagResult{tag: tag, shared: res.shared, settled: res.cached}
	}
	return c.keepTag(key, res.m, checked)
}

// sharedTierTag reads the shared tier's record of a tag this store has none
// of, once for concurrent requests.
func (c *pull) sharedTierTag(key string) (blobcache.Tag, bool) {
	type found struct {
		rec blobcache.Tag
		ok  bool
	}
	cache, parent := c.p.Cache, c.r.Context()
	flight := cache.tagFlight.DoChan("remote\x00"+key, func() (any, error) {
		ctx, stop := detached(parent, sharedTierWait)
		defer stop()
		rec, ok := cache.Store.RemoteTag(ctx, key)
		return found{rec, ok}, nil
	})
	select {
	case v := <-flight:
		f := v.Val.(found)
		return f.rec, f.ok
	case <-parent.Done():
		return blobcache.Tag{}, false
	}
}

func (c *pull) keepTag(key string, m manifest, checked time.Time) tagResult {
	tag := blobcache.Tag{Digest: m.digest, MediaType: m.mediaType, Size: int64(len(m.body)), Checked: checked}
	if m.signed {
		// Neither stored nor recorded: this identity fetched it just now.
		return tagResult{tag: tag, reply: passThroughReply(m)}
	}
	if !c.storeManifest(m) {
		// Still answer this round, from memory.
		return tagResult{tag: tag, reply: manifestReply(m, resultCacheUnavailable)}
	}
	c.p.Cache.setTag(key, tag)
	return tagResult{tag: tag}
}

// serveTagRecord answers from a tag record if the cache has what it
// needs and the identity may read it. A HEAD
// is answered from the record alone if the upstream lately answered this
// identity for the tag. Cached content is always checked by digest: a
// tag's answer names a digest, it does not confirm access to whatever the
// cache holds under it.
func (c *pull) serveTagRecord(tag blobcache.Tag, res Result) (answered bool) {
	h, ok := c.p.Cache.lookup(tag.Digest)
	if !ok {
		if c.r.Method != http.MethodHead || tag.Size <= 0 || !(c.tagConfirmed() || c.mayRead(tag.Digest)) {
			return false
		}
		// A HEAD is answered from the record alone.
		setEntryHeaders(c.w.Header(), tag.Digest, tag.MediaType)
		setOutcome(c.w, c.t, res)
		c.w.Header().Set("Content-Length", strconv.FormatInt(tag.Size, 10))
		c.w.WriteHeader(http.StatusOK)
		return true
	}
	defer h.Close()
	if !c.denyUnreadable(tag.Digest) {
		c.serveHit(h, res)
	}
	return true
}
