package registry

// Prefetch: an image pulled into the cache before any client asks for it.
//
// Every step is a request on the path a client's pull takes (a pull, as
// serve would make it), as the proxy's own identity (its configured
// credentials for the upstream, or anonymous): the tag through its
// record, manifests through the manifest store, blobs through their
// verified fill, access recorded and checked as for that identity. An image
// prefetched is then served to clients exactly as if the proxy had pulled
// it for an anonymous client, and no more widely: a client's later pull
// still goes through the same access check.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// Prefetch statuses of an image.
const (
	// PrefetchFetched: something of the image came from the upstream (or
	// the shared tier) and is now cached.
	PrefetchFetched = "fetched"
	// PrefetchCached: every part of the image was in the cache already.
	PrefetchCached = "cached"
	// PrefetchFailed: a part could not be fetched; Error says why.
	PrefetchFailed = "failed"
	// PrefetchRateLimited: the upstream answered 429 or reported its pull
	// quota used up; the prefetch stopped there.
	PrefetchRateLimited = "rate_limited"
)

// Why an upstream wants no more pulls for now (PrefetchResult.RateLimited).
const (
	LimitedBy429   = "429"
	LimitedByQuota = "quota"
)

// PrefetchResult is what the prefetch of one image did.
type PrefetchResult struct {
	Image    string `json:"image"`
	Upstream string `json:"upstream"`
	// Digest is the manifest (or index) the reference resolved to.
	Digest string `json:"digest,omitempty"`
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	// Platforms lists the platforms taken from an index.
	Platforms        []string `json:"platforms,omitempty"`
	Manifests        int      `json:"manifests"`
	ManifestsFetched int      `json:"manifests_fetched"`
	Blobs            int      `json:"blobs"`
	BlobsFetched     int      `json:"blobs_fetched"`
	Bytes            int64    `json:"bytes"`
	BytesFetched     int64    `json:"bytes_fetched"`
	// RateLimited is set when the upstream answered 429 (LimitedBy429) or
	// reported its quota at 0 (LimitedByQuota) during this image, even if
	// the image itself was done: nothing more should be asked of it now.
	RateLimited string `json:"rate_limited,omitempty"`
}

// PrefetchProgress is how far the prefetch of an image is: its blobs
// (configs and layers) done of those it needs, and their bytes.
type PrefetchProgress struct {
	Image      string `json:"image"`
	BlobsDone  int    `json:"blobs_done"`
	BlobsTotal int    `json:"blobs_total"`
	BytesDone  int64  `json:"bytes_done"`
	BytesTotal int64  `json:"bytes_total"`
}

// prefetchAccept is the Accept of a prefetch's manifest requests: every
// manifest and index type of Docker and OCI. A tag record made for it
// answers any client whose Accept admits the type it holds (acceptsets.go).
const prefetchAccept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, " +
	"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// prefetchUserAgent follows the proxy's own User-Agent upstream.
const prefetchUserAgent = "prefetch"

// maxIndexDepth bounds indexes within indexes.
const maxIndexDepth = 3

// Prefetch fetches img into the cache: the manifest, for an index each
// manifest of the platforms given (all when none are), then every config
// and layer blob. progress, if not nil, is told after each blob. ctx ends
// the prefetch (fills that other clients joined go on without it).
func (p *Proxy) Prefetch(ctx context.Context, img PullRef, platforms []Platform, progress func(PrefetchProgress)) PrefetchResult {
	res := PrefetchResult{Image: img.String(), Upstream: img.Registry}
	up, ok := p.Router.ByName(img.Registry)
	if !ok {
		return res.fail(fmt.Errorf("registry %s is not proxied by this handler", img.Registry))
	}
	res.Upstream = up.Name
	if p.Cache == nil {
		return res.fail(errors.New("the cache is off"))
	}
	name := img.nameOn(up)
	if rerr := p.Rules.Refuse(up, name); rerr != nil {
		return res.fail(errors.New(rerr.Message))
	}
	f := &prefetcher{ctx: ctx, p: p, up: up, name: name, platforms: platforms, progress: progress, res: &res}
	f.run(img)
	switch {
	case res.Error != "" && res.RateLimited != "":
		res.Status = PrefetchRateLimited
	case res.Error != "":
		res.Status = PrefetchFailed
	case res.ManifestsFetched+res.BlobsFetched > 0:
		res.Status = PrefetchFetched
	default:
		res.Status = PrefetchCached
	}
	if res.RateLimited == "" && f.quotaUsedUp() {
		res.RateLimited = LimitedByQuota
	}
	return res
}

func (r *PrefetchResult) fail(err error) PrefetchResult {
	r.Status, r.Error = PrefetchFailed, err.Error()
	return *r
}

// prefetcher is the prefetch of one image in progress.
type prefetcher struct {
	ctx       context.Context
	p         *Proxy
	up        Upstream
	name      string // the repository on the upstream
	platforms []Platform
	progress  func(PrefetchProgress)
	res       *PrefetchResult
}

// quotaUsedUp reports whether the upstream's last answers to the proxy's
// own identity (a prefetch's, and an anonymous client's or one the
// configured credentials serve) said its pull quota is used up: manifest
// GETs are paused (upstreamstate.go).
func (f *prefetcher) quotaUsedUp() bool {
	c := f.p.Upstream
	return c.state.quotaSpentFor(f.up, requestIdentity(tokenauth.Grant{}), c.now())
}

// stop is why the prefetch stopped: an error, with the upstream's rate
// limit if that was why.
type stop struct {
	err     error
	limited string
}

func (s *stop) Error() string { return s.err.Error() }

func (f *prefetcher) run(img PullRef) {
	err := f.fetch(img)
	if err == nil {
		return
	}
	f.res.Error = err.Error()
	var s *stop
	if errors.As(err, &s) && s.limited != "" {
		f.res.RateLimited = s.limited
	}
}

func (f *prefetcher) fetch(img PullRef) error {
	root := APIPath{Kind: KindManifest, Name: f.name, Tag: img.Tag, Digest: img.Digest}
	if img.Digest != "" {
		root.Tag = ""
	}
	doc, d, err := f.manifest(root)
	if err != nil {
		return err
	}
	f.res.Digest = d.String()
	blobs, err := f.blobsOf(doc, 0)
	if err != nil {
		return err
	}
	return f.fetchBlobs(blobs)
}

// manifest fetches a manifest by tag or digest and parses it.
func (f *prefetcher) manifest(path APIPath) (manifestDoc, digest.Digest, error) {
	if f.quotaUsedUp() {
		// Docker Hub counts every manifest GET: one more would be
		// refused, and would count against the next window.
		return manifestDoc{}, "", &stop{err: fmt.Errorf("the upstream reported its pull quota used up before manifest %s", refIn(path)), limited: LimitedByQuota}
	}
	a, err := f.serve(path, http.MethodGet, maxManifestSize)
	if err != nil {
		return manifestDoc{}, "", err
	}
	f.res.Manifests++
	if a.fetched() {
		f.res.ManifestsFetched++
	}
	d, err := digest.Parse(a.header.Get("Docker-Content-Digest"))
	if err != nil || d.Validate() != nil || d != d.Algorithm().FromBytes(a.body) {
		return manifestDoc{}, "", fmt.Errorf("manifest %s: the answer is not the manifest it names", refIn(path))
	}
	var doc manifestDoc
	if err := json.Unmarshal(a.body, &doc); err != nil {
		return manifestDoc{}, "", fmt.Errorf("manifest %s: %v", refIn(path), err)
	}
	if doc.MediaType == "" {
		doc.MediaType = a.header.Get("Content-Type")
	}
	return doc, d, nil
}

// blobsOf fetches the manifests an index lists for the chosen platforms
// and returns the blobs of every image, each once.
func (f *prefetcher) blobsOf(doc manifestDoc, depth int) ([]ocispec.Descriptor, error) {
	if !isIndexType(doc.MediaType) && (doc.Config != nil || len(doc.Manifests) == 0) {
		return imageBlobs(doc), nil
	}
	if depth >= maxIndexDepth {
		return nil, fmt.Errorf("indexes nested more than %d deep", maxIndexDepth)
	}
	var blobs []ocispec.Descriptor
	seen := map[digest.Digest]bool{}
	chosen := 0
	for _, m := range doc.Manifests {
		if !f.wanted(m) {
			continue
		}
		chosen++
		if m.Platform != nil {
			f.res.Platforms = append(f.res.Platforms, entryPlatform(m).String())
		}
		child, _, err := f.manifest(APIPath{Kind: KindManifest, Name: f.name, Digest: m.Digest})
		if err != nil {
			return nil, err
		}
		more, err := f.blobsOf(child, depth+1)
		if err != nil {
			return nil, err
		}
		for _, b := range more {
			if !seen[b.Digest] {
				seen[b.Digest] = true
				blobs = append(blobs, b)
			}
		}
	}
	if chosen == 0 {
		var has []string
		for _, m := range doc.Manifests {
			if m.Platform != nil {
				has = append(has, entryPlatform(m).String())
			}
		}
		return nil, fmt.Errorf("the index has no manifest for %s (it has %s)", platformList(f.platforms), strings.Join(has, ", "))
	}
	return blobs, nil
}

// wanted reports whether an index entry is one to fetch: any, when no
// platforms were given; else one whose platform is among them.
func (f *prefetcher) wanted(m ocispec.Descriptor) bool {
	if len(f.platforms) == 0 {
		return true
	}
	if m.Platform == nil {
		return false
	}
	for _, p := range f.platforms {
		if p.matches(entryPlatform(m)) {
			return true
		}
	}
	return false
}

func entryPlatform(m ocispec.Descriptor) Platform {
	return Platform{OS: m.Platform.OS, Architecture: m.Platform.Architecture, Variant: m.Platform.Variant}
}

func platformList(ps []Platform) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// imageBlobs are an image manifest's config and layers (an artifact's
// blobs), without the layers that clients fetch from elsewhere (foreign
// layers, with URLs).
func imageBlobs(doc manifestDoc) []ocispec.Descriptor {
	var blobs []ocispec.Descriptor
	for _, b := range doc.contents() {
		if len(b.URLs) > 0 || strings.Contains(b.MediaType, "foreign") || strings.Contains(b.MediaType, "nondistributable") {
			continue
		}
		blobs = append(blobs, b)
	}
	return blobs
}

// fetchBlobs fetches the blobs the cache does not hold, and checks that
// this identity may read those it does.
func (f *prefetcher) fetchBlobs(blobs []ocispec.Descriptor) error {
	prog := PrefetchProgress{Image: f.res.Image, BlobsTotal: len(blobs)}
	for _, b := range blobs {
		prog.BytesTotal += b.Size
	}
	f.res.Blobs, f.res.Bytes = prog.BlobsTotal, prog.BytesTotal
	f.report(prog)
	for _, b := range blobs {
		if err := b.Digest.Validate(); err != nil {
			return fmt.Errorf("blob %q: %v", b.Digest, err)
		}
		path := APIPath{Kind: KindBlob, Name: f.name, Digest: b.Digest}
		method := http.MethodGet
		if f.p.Cache.Store.Contains(b.Digest) {
			// A HEAD needs no bytes: the access check and the answer.
			method = http.MethodHead
		}
		a, err := f.serve(path, method, 0)
		if err == nil && method == http.MethodHead && a.outcome.Outcome != OutcomeHit {
			// Evicted since: a HEAD is forwarded, not filled.
			a, err = f.serve(path, http.MethodGet, 0)
		}
		if err != nil {
			return err
		}
		if a.fetched() {
			f.res.BlobsFetched++
			f.res.BytesFetched += a.written
		}
		prog.BlobsDone++
		prog.BytesDone += b.Size
		f.report(prog)
	}
	return nil
}

func (f *prefetcher) report(p PrefetchProgress) {
	if f.progress != nil {
		f.progress(p)
	}
}

// answer is the response the request path gave a prefetch's request.
type answer struct {
	status  int
	header  http.Header
	body    []byte // as much as was kept
	written int64
	outcome Result
}

// fetched reports whether the answer came from the upstream (or the
// shared tier) rather than the cache.
func (a *answer) fetched() bool {
	switch a.outcome.Outcome {
	case OutcomeMiss, OutcomeShared, OutcomeJoined:
		return true
	}
	return false
}

// serve sends one request down the request path, as the proxy's own
// identity, and returns its answer if it is content; else why not.
func (f *prefetcher) serve(path APIPath, method string, keep int) (*answer, error) {
	if err := f.ctx.Err(); err != nil {
		return nil, &stop{err: fmt.Errorf("stopped: %w", err)}
	}
	r, err := http.NewRequestWithContext(f.ctx, method, "http://prefetch.invalid"+upstreamPath(path), nil)
	if err != nil {
		return nil, err
	}
	r.Header.Set("User-Agent", prefetchUserAgent)
	if path.Kind == KindManifest {
		r.Header.Set("Accept", prefetchAccept)
	}
	w := &answerWriter{header: http.Header{}, keep: keep}
	a := &answer{}
	c := &pull{p: f.p, w: w, r: r, t: target{up: f.up, prefix: "/v2/", outcome: &a.outcome}, path: path}
	if err := serveRecovering(c); err != nil {
		return nil, fmt.Errorf("%s %s: %w", kindWord(path.Kind), refIn(path), err)
	}
	a.status, a.header, a.body, a.written = w.status, w.header, w.body.Bytes(), w.written
	if a.status == 0 {
		a.status = http.StatusOK
	}
	if a.outcome.UpstreamStatus == http.StatusTooManyRequests || a.status == http.StatusTooManyRequests {
		return nil, &stop{err: fmt.Errorf("%s %s: the upstream answered 429 Too Many Requests", kindWord(path.Kind), refIn(path)), limited: LimitedBy429}
	}
	switch {
	case a.outcome.Outcome == OutcomeStale:
		return nil, fmt.Errorf("%s %s: the upstream failed (%s); the cache holds the tag's last known digest, %s",
			kindWord(path.Kind), refIn(path), upstreamFailure(a.outcome), a.header.Get("Docker-Content-Digest"))
	case a.status != http.StatusOK:
		return nil, fmt.Errorf("%s %s: %s", kindWord(path.Kind), refIn(path), errorOf(a))
	case a.outcome.Outcome == OutcomeCacheUnavailable || a.outcome.Outcome == OutcomeSchema1NotStored:
		return nil, fmt.Errorf("%s %s: passed through, not cached (%s)", kindWord(path.Kind), refIn(path), a.outcome.CacheStatus())
	}
	return a, nil
}

// serveRecovering serves c's request. The request path aborts a response
// whose body failed (a cut or a wrong blob) by panicking with
// http.ErrAbortHandler, as net/http expects of a handler; here that is an
// error, as any other panic would be: a prefetch runs outside net/http.
func serveRecovering(c *pull) (err error) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler { //nolint:errorlint // the sentinel itself is what is panicked with
				err = errors.New("the transfer failed (cut short, or bytes that do not match the digest): nothing was kept")
				return
			}
			err = fmt.Errorf("internal error: %v", v)
		}
	}()
	switch c.path.Kind {
	case KindManifest:
		c.serveManifest()
	case KindBlob:
		c.serveBlob()
	}
	return nil
}

// refIn names what path asks for: repository:tag or repository@digest.
func refIn(path APIPath) string {
	if path.Tag != "" {
		return path.Name + ":" + path.Tag
	}
	return path.Name + "@" + path.Digest.String()
}

func kindWord(k Kind) string {
	if k == KindBlob {
		return "blob"
	}
	return "manifest"
}

func upstreamFailure(res Result) string {
	if res.UpstreamStatus == 0 {
		return "no answer"
	}
	return "status " + strconv.Itoa(res.UpstreamStatus)
}

// errorOf is the registry error in a's body, or its status.
func errorOf(a *answer) string {
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(a.body, &body) == nil && len(body.Errors) > 0 {
		return fmt.Sprintf("%d %s: %s", a.status, body.Errors[0].Code, body.Errors[0].Message)
	}
	return fmt.Sprintf("status %d", a.status)
}

// answerWriter is the ResponseWriter of a prefetch's request: it keeps
// the status, the headers and up to keep bytes of the body, and counts
// the rest.
type answerWriter struct {
	header  http.Header
	status  int
	body    bytes.Buffer
	keep    int
	written int64
}

func (w *answerWriter) Header() http.Header { return w.header }

func (w *answerWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *answerWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	// Error bodies are kept whatever keep says: they say why.
	limit := w.keep
	if w.status != http.StatusOK {
		limit = 64 << 10
	}
	if room := limit - w.body.Len(); room > 0 {
		w.body.Write(p[:min(len(p), room)])
	}
	w.written += int64(len(p))
	return len(p), nil
}
