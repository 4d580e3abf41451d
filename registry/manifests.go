package registry

// Manifests: by digest from the cache or the upstream; by tag through a
// tag record that is fresh for tag_ttl, then revalidated with a HEAD.

import (
	"bytes"
	"context"
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

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// serveManifest answers GET and HEAD of a manifest by tag or digest.
func (p *Proxy) serveManifest(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant) {
	if p.Cache == nil {
		p.forward(w, r, t, req, grant, resultBypass)
		return
	}
	if req.Tag != "" {
		p.serveTag(w, r, t, req, grant)
		return
	}
	p.serveManifestByDigest(w, r, t, req, grant)
}

func (p *Proxy) serveManifestByDigest(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant) {
	if p.serveCached(w, r, t, req, grant) {
		return
	}
	if r.Method == http.MethodHead {
		// A HEAD needs no bytes: ask the upstream rather than fill.
		p.forward(w, r, t, req, grant, resultMiss)
		return
	}
	res, ok := p.fetchByDigest(r, t, req, grant, req.Digest)
	switch {
	case !ok:
		return // the client left
	case res.reply != nil:
		p.relay(w, r, t, req, res.reply.response(), res.reply.outcomeOr(resultMiss))
	case res.err != nil:
		p.writeUpstreamError(w, t, res.err)
	case res.shared, res.cached:
		// Another instance or another round fetched it, maybe with
		// other credentials.
		if p.mayRead(w, r, t, req, grant, req.Digest) {
			served := resultShared
			if res.cached {
				served = resultHit
			}
			writeManifest(w, r, t, res.m, served)
		}
	default:
		writeManifest(w, r, t, res.m, resultMiss)
	}
}

// digestResult is a manifest fetched by digest, or why not.
type digestResult struct {
	m     manifest
	reply *storedReply // the upstream's non-200 answer
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
func (p *Proxy) fetchByDigest(r *http.Request, t target, req Request, grant tokenauth.Grant, d digest.Digest) (res digestResult, ok bool) {
	key := "digest\x00" + t.up.String() + "\x00" + req.Name + "\x00" + d.String() + "\x00" + p.askedAs(grant, t.up)
	flight := p.Cache.tagFlight.DoChan(key, func() (any, error) {
		// A round that ended between this request's look at the cache
		// and this one may have stored it already.
		if m, ok := p.cachedManifest(d); ok {
			return digestResult{m: m, cached: true}, nil
		}
		ctx, stop := detached(r.Context(), upstreamAnswerTimeout)
		defer stop()
		if m, ok := p.sharedManifest(ctx, d); ok {
			return digestResult{m: m, shared: true}, nil
		}
		m, reply, err := p.fetchManifest(r.WithContext(ctx), t, req, grant, d.String())
		switch {
		case err != nil:
			return digestResult{err: err}, nil
		case reply != nil:
			return digestResult{reply: keepReply(reply)}, nil
		case m.digest != d:
			return digestResult{err: errManifestInvalid("manifest %s: upstream sent content with digest %s", d, m.digest)}, nil
		case m.signed:
			return digestResult{reply: passThroughReply(m)}, nil
		}
		if !p.storeManifest(t, req, grant, m) {
			return digestResult{reply: manifestReply(m, resultCacheUnavailable)}, nil
		}
		return digestResult{m: m}, nil
	})
	select {
	case v := <-flight:
		return v.Val.(digestResult), true
	case <-r.Context().Done():
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
	ctx, cancel := context.WithTimeout(ctx, remoteWait)
	defer cancel()
	info, body, err := p.Cache.Store.LoadRemote(ctx, d, maxManifestSize)
	if err != nil {
		if !errors.Is(err, blobcache.ErrNotFound) {
			p.Logger.Debug("manifest not taken from the shared cache", zap.String("digest", d.String()), zap.Error(err))
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
func (p *Proxy) fetchManifest(r *http.Request, t target, req Request, grant tokenauth.Grant, ref string) (manifest, *http.Response, error) {
	get := req
	get.Tag, get.Digest = "", ""
	if d, err := digest.Parse(ref); err == nil {
		get.Digest = d
	} else {
		get.Tag = ref
	}
	resp, err := p.Upstream.Do(r.Context(), t.up, grant, outboundFor(r, get, http.MethodGet))
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
func (p *Proxy) storeManifest(t target, req Request, grant tokenauth.Grant, m manifest) bool {
	c := p.Cache
	var scopes []string
	if grant.Anonymous() {
		scopes = append(scopes, accessScope(p.askedAs(grant, t.up), t, req.Name))
	}
	if err := c.Store.Put(m.digest, m.mediaType, m.body, scopes...); err != nil {
		p.Logger.Debug("manifest not cached", zap.String("digest", m.digest.String()), zap.Error(err))
		return false
	}
	c.memory.add(&memoryEntry{digest: m.digest, mediaType: m.mediaType, body: m.body, modTime: time.Now()})
	p.grantRead(grant, t, req.Name, m.digest)
	return true
}

func writeManifest(w http.ResponseWriter, r *http.Request, t target, m manifest, res Result) {
	h := w.Header()
	setEntryHeaders(h, m.digest, m.mediaType)
	setOutcome(w, t, res)
	h.Set("Content-Length", strconv.Itoa(len(m.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(m.body)
	}
}

// tagKey names a tag record. The client's Accept is part of it because
// the upstream's answer depends on it (an index, or one platform's
// manifest for clients that do not accept indexes).
func tagKey(t target, req Request, r *http.Request) (key, base, accept string) {
	base = t.up.String() + "\x00" + req.Name + "\x00" + req.Tag
	accept = acceptKey(r.Header.Values("Accept"))
	return base + "\x00" + accept, base, accept
}

// acceptKeys remembers acceptKey's answers: clients send a handful of
// distinct Accept headers, each with every manifest request, and parsing
// them was a tenth of a cache hit's cost.
var acceptKeys struct {
	sync.Mutex
	m map[string]string
}

// acceptKeysMax bounds the memo, which starts over when full, and
// acceptKeyMaxMemo the Accept values it keeps (real clients send less).
const (
	acceptKeysMax    = 1024
	acceptKeyMaxMemo = 1024
)

// acceptKey returns the normalised form of Accept values (see
// normaliseAccept), memoised.
func acceptKey(values []string) string {
	raw := strings.Join(values, "\n")
	acceptKeys.Lock()
	key, ok := acceptKeys.m[raw]
	acceptKeys.Unlock()
	if ok {
		return key
	}
	key = normaliseAccept(values)
	if len(raw) > acceptKeyMaxMemo {
		return key // not worth the memory
	}
	acceptKeys.Lock()
	if acceptKeys.m == nil || len(acceptKeys.m) >= acceptKeysMax {
		acceptKeys.m = make(map[string]string)
	}
	acceptKeys.m[raw] = key
	acceptKeys.Unlock()
	return key
}

// normaliseAccept reduces Accept values to what can change a registry's
// answer, as one value that is both the Accept sent upstream and the Accept
// part of record keys, so the two never disagree:
//   - only the media ranges in acceptRanges count; others, and ranges
//     that do not parse (or carry a q that is not an RFC 9110 qvalue), are
//     dropped, so meaningless variations cannot multiply records;
//   - a range with q=0 is "not acceptable" (RFC 9110, 12.4.2): it is left
//     out, or, when an accepted wildcard would otherwise admit it, kept as
//     "<type>;q=0"; other q values are dropped (registries choose by their
//     own preference, not by weight);
//   - a range both accepted and refused is refused;
//   - lower case, sorted, de-duplicated, joined by ",".
func normaliseAccept(values []string) string {
	accepted := map[string]bool{}
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || !acceptRanges[mt] {
				continue
			}
			ok := true
			if q, has := params["q"]; has {
				zero, valid := parseQValue(q)
				if !valid {
					continue
				}
				ok = !zero
			}
			if prev, seen := accepted[mt]; seen {
				ok = ok && prev
			}
			accepted[mt] = ok
		}
	}
	wildcard := accepted["*/*"] || accepted["application/*"]
	out := make([]string, 0, len(accepted))
	for mt, ok := range accepted {
		switch {
		case ok:
			out = append(out, mt)
		case wildcard:
			out = append(out, mt+";q=0")
		}
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// parseQValue checks a qvalue (RFC 9110, 12.4.2: "0" ["." 0*3DIGIT] or
// "1" ["." 0*3"0"]) and reports whether it is zero.
func parseQValue(q string) (zero, valid bool) {
	if q == "" || len(q) > 5 || (q[0] != '0' && q[0] != '1') {
		return false, false
	}
	frac := q[1:]
	if frac != "" {
		if frac[0] != '.' {
			return false, false
		}
		frac = frac[1:]
	}
	for _, c := range frac {
		if c < '0' || c > '9' || (q[0] == '1' && c != '0') {
			return false, false
		}
	}
	return q[0] == '0' && strings.Trim(frac, "0") == "", true
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
	// shared: the manifest came from the shared tier.
	shared bool
	// settled: another round had just settled the tag; nothing was asked.
	settled bool
}

// storedReply is an upstream answer kept in memory so that every request
// that shared the upstream round can relay it.
type storedReply struct {
	status int
	header http.Header
	body   []byte
	// outcome, if set, is the outcome of a reply the proxy made itself (a
	// manifest passed through), not the upstream's answer.
	outcome Result
}

func (s *storedReply) outcomeOr(def Result) Result {
	if s.outcome.Outcome != OutcomeNone {
		return s.outcome
	}
	return def
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
	key, base, accept := tagKey(t, req, r)
	rec, known := c.Store.Tag(key)
	if !known {
		// Another client's Accept set may have the answer already.
		rec, known = c.siblingTag(base, accept, time.Now())
	} else {
		c.accepts.add(base, accept)
	}
	hitResult := resultHit
	if !known {
		// Another instance may have checked the tag: with a fresh
		// record, N instances cost the upstream one GET.
		if rec, known = p.remoteTag(r, key); known {
			c.accepts.add(base, accept)
			hitResult = resultShared
		} else {
			// Set here while the shared tier was asked? Then the
			// upstream round that set it must not be made again.
			rec, known = c.Store.Tag(key)
		}
	}
	fresh := known && time.Since(rec.Checked) < c.TagTTL
	if fresh && p.serveTagRecord(w, r, t, req, grant, rec, hitResult) {
		return
	}
	flight := c.tagFlight.DoChan(key+"\x00"+p.askedAs(grant, t.up)+"\x00"+r.Method, func() (any, error) {
		// Shared by every request of this identity for the tag: it must
		// not end with the first one's. A revalidation that takes too
		// long counts as an upstream failure (stale-if-error).
		timeout := upstreamAnswerTimeout
		if known {
			timeout = revalidationTimeout
		}
		// A round that ended between this request's look at the record
		// and this one may have settled the tag already.
		if cur, ok := c.Store.Tag(key); ok && time.Since(cur.Checked) < c.TagTTL &&
			(!known || cur.Checked.After(rec.Checked)) && c.Store.Contains(cur.Digest) {
			return tagResult{tag: cur, settled: true}, nil
		}
		ctx, stop := detached(r.Context(), timeout)
		defer stop()
		shared := r.WithContext(ctx)
		switch {
		case fresh: // the record holds, its manifest is not cached (it came from a HEAD, or was evicted)
			return p.fetchTagByDigest(shared, t, req, grant, key, rec.Digest, rec.Checked), nil
		case known:
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
		p.relay(w, r, t, req, res.reply.response(), res.reply.outcomeOr(resultMiss))
	case res.err != nil || res.upstreamStatus != 0:
		if known && !c.Store.Contains(rec.Digest) {
			// The manifest may be in the shared tier only (the
			// record came from there, or it was evicted here).
			p.sharedManifest(r.Context(), rec.Digest)
		}
		if known && p.serveTagRecord(w, r, t, req, grant, rec, resultStale(res.upstreamStatus)) {
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
		served := resultMiss
		switch {
		case res.settled:
			served = resultHit
		case res.shared:
			served = resultShared
		case known && res.tag.Digest == rec.Digest:
			served = resultRevalidated
		}
		if !p.serveTagRecord(w, r, t, req, grant, res.tag, served) {
			p.writeUpstreamError(w, t, errors.New("manifest vanished from the cache"))
		}
	}
}

// revalidateTag asks the upstream with a HEAD (which Docker Hub does not
// count) whether the tag still points at rec's digest.
func (p *Proxy) revalidateTag(r *http.Request, t target, req Request, grant tokenauth.Grant, key string, rec blobcache.Tag) tagResult {
	resp, err := p.Upstream.Do(r.Context(), t.up, grant, outboundFor(r, req, http.MethodHead))
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
	if p.Cache.Store.Contains(d) || r.Method == http.MethodHead {
		// No GET (which Docker Hub counts): the manifest is cached, or
		// a HEAD needs none. The HEAD says where the tag points, not
		// that this identity may read cached content of that digest:
		// serving it is checked by digest (serveTagRecord).
		size, _ := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
		tag := blobcache.Tag{Digest: d, MediaType: resp.Header.Get("Content-Type"), Size: size, Checked: time.Now()}
		if d == rec.Digest && rec.Size > 0 {
			tag.MediaType, tag.Size = rec.MediaType, rec.Size
		}
		p.tagAnswer(grant, t, req)
		p.Cache.setTag(key, tag)
		return tagResult{tag: tag}
	}
	return p.fetchTagByDigest(r, t, req, grant, key, d, time.Now())
}

// fetchTag resolves a tag the cache does not know: GET (HEAD for a HEAD).
func (p *Proxy) fetchTag(r *http.Request, t target, req Request, grant tokenauth.Grant, key string) tagResult {
	if r.Method == http.MethodHead {
		resp, err := p.Upstream.Do(r.Context(), t.up, grant, outboundFor(r, req, http.MethodHead))
		if err != nil {
			return tagResult{err: err}
		}
		if resp.StatusCode != http.StatusOK {
			return tagResult{reply: keepReply(resp)}
		}
		if isSchema1Signed(resp.Header.Get("Content-Type")) {
			// Its GET will be passed through, never stored: no record
			// that would send it to the cache (see schema1.go).
			reply := keepReply(resp)
			reply.outcome = resultSchema1
			return tagResult{reply: reply}
		}
		drain(resp.Body)
		d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
		if err != nil {
			return tagResult{err: fmt.Errorf("upstream HEAD of %s:%s has no valid Docker-Content-Digest", req.Name, req.Tag)}
		}
		size, _ := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
		tag := blobcache.Tag{Digest: d, MediaType: resp.Header.Get("Content-Type"), Size: size, Checked: time.Now()}
		p.tagAnswer(grant, t, req)
		p.Cache.setTag(key, tag)
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
	p.tagAnswer(grant, t, req)
	return p.keepTag(t, req, grant, key, m, time.Now())
}

// fetchTagByDigest gets the manifest a tag points at; checked is when the
// upstream last confirmed the tag (now, or the record's time when only the
// manifest was missing).
func (p *Proxy) fetchTagByDigest(r *http.Request, t target, req Request, grant tokenauth.Grant, key string, d digest.Digest, checked time.Time) tagResult {
	res, ok := p.fetchByDigest(r, t, req, grant, d)
	switch {
	case !ok:
		return tagResult{err: r.Context().Err()}
	case res.reply != nil:
		if res.reply.status == http.StatusTooManyRequests || res.reply.status >= 500 {
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
		p.Cache.setTag(key, tag)
		return tagResult{tag: tag, shared: res.shared, settled: res.cached}
	}
	return p.keepTag(t, req, grant, key, res.m, checked)
}

// remoteTag reads the shared tier's record of a tag this store has none
// of, once for concurrent requests.
func (p *Proxy) remoteTag(r *http.Request, key string) (blobcache.Tag, bool) {
	type found struct {
		rec blobcache.Tag
		ok  bool
	}
	c := p.Cache
	flight := c.tagFlight.DoChan("remote\x00"+key, func() (any, error) {
		ctx, stop := detached(r.Context(), remoteWait)
		defer stop()
		rec, ok := c.Store.RemoteTag(ctx, key)
		return found{rec, ok}, nil
	})
	select {
	case v := <-flight:
		f := v.Val.(found)
		return f.rec, f.ok
	case <-r.Context().Done():
		return blobcache.Tag{}, false
	}
}

func (p *Proxy) keepTag(t target, req Request, grant tokenauth.Grant, key string, m manifest, checked time.Time) tagResult {
	tag := blobcache.Tag{Digest: m.digest, MediaType: m.mediaType, Size: int64(len(m.body)), Checked: checked}
	if m.signed {
		// Neither stored nor recorded: this identity fetched it just now.
		return tagResult{tag: tag, reply: passThroughReply(m)}
	}
	if !p.storeManifest(t, req, grant, m) {
		// Still answer this round, from memory.
		return tagResult{tag: tag, reply: manifestReply(m, resultCacheUnavailable)}
	}
	p.Cache.setTag(key, tag)
	return tagResult{tag: tag}
}

// manifestReply is m as a reply that the proxy makes itself, with outcome
// res: a manifest served as fetched and not kept.
func manifestReply(m manifest, res Result) *storedReply {
	h := http.Header{}
	setEntryHeaders(h, m.digest, m.mediaType)
	h.Set("Content-Length", strconv.Itoa(len(m.body)))
	return &storedReply{status: http.StatusOK, header: h, body: m.body, outcome: res}
}

// serveTagRecord answers from a tag record if the cache has what it
// needs and the identity may read it; false means "not answered". A HEAD
// is answered from the record alone if the upstream lately answered this
// identity for the tag. Cached content is always checked by digest: a
// tag's answer names a digest, it does not confirm access to whatever the
// cache holds under it.
func (p *Proxy) serveTagRecord(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant, tag blobcache.Tag, res Result) bool {
	c := p.Cache
	h, ok := c.lookup(tag.Digest)
	if !ok {
		if r.Method != http.MethodHead || tag.Size <= 0 || !(p.tagAnswered(grant, t, req) || p.mayReadQuiet(r, t, req, grant, tag.Digest)) {
			return false
		}
		// A HEAD is answered from the record alone.
		setEntryHeaders(w.Header(), tag.Digest, tag.MediaType)
		setOutcome(w, t, res)
		w.Header().Set("Content-Length", strconv.FormatInt(tag.Size, 10))
		w.WriteHeader(http.StatusOK)
		return true
	}
	defer h.Close()
	if p.mayRead(w, r, t, req, grant, tag.Digest) {
		serveHit(w, r, t, h, res)
	}
	return true
}
