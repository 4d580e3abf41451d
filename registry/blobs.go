package registry

// Blobs: hits from the file, misses through one shared fill per digest.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

// serveBlob answers GET and HEAD of a blob: hits from the file, misses
// through one shared fill per digest that streams to every reader.
func (c *pull) serveBlob() {
	cache := c.p.Cache
	if cache == nil {
		c.forward(resultBypass)
		return
	}
	if c.serveCached() {
		return
	}
	// A fill with every byte verified is being committed: that takes a
	// moment, and then it is a hit like any other.
	if cache.Store.AwaitCommit(c.r.Context(), c.path.Digest) && c.serveCached() {
		return
	}
	if c.r.Method == http.MethodHead {
		// A HEAD needs no bytes: ask the upstream rather than fill.
		c.forward(resultMiss)
		return
	}
	c.fillBlob(true)
}

// fillBlob serves a blob the cache does not hold through the fill of its
// digest: another request's, or one this request leads, from the shared
// tier (if trySharedTier) or else from the upstream.
func (c *pull) fillBlob(trySharedTier bool) {
	p, d := c.p, c.path.Digest
	fill, leader := p.Cache.Store.Join(d)
	if !leader {
		// Someone else's fill: this identity must be allowed too.
		if c.denyUnreadable(d) {
			return
		}
		rd, err := fill.Reader(c.r.Context())
		if err != nil {
			// The fill never started (the leader's upstream request
			// failed): ask the upstream ourselves.
			c.forward(resultMiss)
			return
		}
		c.serveFill(rd, resultJoined)
		return
	}
	if trySharedTier && c.serveSharedBlob(fill) {
		return
	}
	o := outboundFor(c.r, c.path, http.MethodGet)
	o.header.Del("Range") // the fill fetches the whole blob; ranges are served from it
	// The fill outlives this request (others join it, and it finishes the
	// entry if they all leave), so the upstream request must not end with
	// this client's; the store closes the body when the fill is abandoned.
	ctx, stop := detached(c.r.Context(), upstreamAnswerTimeout)
	resp, err := p.Upstream.Do(ctx, c.t.up, c.grant, o)
	stop()
	if err != nil {
		fill.Fail(err)
		c.writeUpstreamError(err)
		return
	}
	if resp.StatusCode != http.StatusOK {
		fill.Fail(fmt.Errorf("upstream answered %d", resp.StatusCode))
		c.relay(resp, resultMiss)
		return
	}
	// The upstream's final answer for this digest: this identity may
	// read it (the proxy's own kept with the fill, so only if its bytes
	// prove right).
	c.confirmRead(d)
	up := c.t.up
	src := blobcache.Source{Body: resp.Body, Size: resp.ContentLength, MediaType: blobMediaType(resp),
		OnFailure: func(err error) { p.fillFailed(up, d, err) }, OnFilled: p.filled(up)}
	rd, err := fill.StartReading(c.r.Context(), src)
	if err != nil {
		// The cache cannot take it (disk full, unwritable): pass the
		// bytes through as they come.
		p.Logger.Debug("blob not cached", zap.String("digest", d.String()), zap.Error(err))
		h := c.w.Header()
		setEntryHeaders(h, d, src.MediaType)
		setOutcome(c.w, c.t, resultCacheUnavailable)
		if resp.ContentLength >= 0 {
			h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
		}
		defer resp.Body.Close() // also when copyBody aborts the response
		c.w.WriteHeader(http.StatusOK)
		copyBody(c.w, resp.Body)
		return
	}
	c.serveFill(rd, resultMiss)
}

// serveSharedBlob fills a blob from the shared tier, if it holds it, and
// serves it, as the leader of the fill; not answered means the shared tier
// could not help and the fill is still the leader's. The bytes are
// verified as the upstream's would be, and the cache never widens access:
// unless the shared copy's scopes hold this route's repository (the
// proxy's own identity fetched it there), the upstream must accept this
// client first.
func (c *pull) serveSharedBlob(fill *blobcache.Fill) (answered bool) {
	ctx, cancel := context.WithTimeout(c.r.Context(), sharedTierWait)
	started, err := fill.StartRemote(ctx)
	cancel()
	if errors.Is(err, blobcache.ErrUnavailable) {
		// The disk cannot take it, and the fill failed: pass the
		// upstream's bytes through.
		c.forward(resultCacheUnavailable)
		return true
	}
	if !started {
		return false
	}
	if c.denyUnreadable(c.path.Digest) {
		return true
	}
	rd, err := fill.Reader(c.r.Context())
	if err != nil {
		if c.r.Context().Err() == nil {
			// The shared copy failed before this reader came (wrong
			// bytes, the tier went away): fill from the upstream, so
			// that its bytes are kept, not just passed through.
			c.fillBlob(false)
		}
		return true
	}
	c.serveFill(rd, resultShared)
	return true
}

func blobMediaType(resp *http.Response) string {
	ct := resp.Header.Get("Content-Type")
	if ct == "" || strings.HasPrefix(ct, "binary/") {
		return "application/octet-stream"
	}
	return ct
}

// serveFill serves a fill in progress. A failed fill (upstream cut, wrong
// bytes) aborts the client's connection: never a clean end. If the fill
// stops because the cache's disk failed, the reader fetches the rest from
// the upstream with this client's identity and still verifies the blob.
func (c *pull) serveFill(rd *blobcache.Reader, res Result) {
	w, r := c.w, c.r
	defer rd.Close()
	info := rd.Info()
	setEntryHeaders(w.Header(), info.Digest, info.MediaType)
	setOutcome(w, c.t, res)
	er := &errorRecorder{r: rd}
	rangeHeader := r.Header.Get("Range")
	if info.Size < 0 && rangeHeader == "" {
		w.WriteHeader(http.StatusOK)
		copyBody(w, er)
		return
	}
	// With an unknown size, ServeContent's seek to the end waits for the
	// fill's verdict: a range of a chunked upstream body is served whole.
	if info.Size >= 0 {
		rd.SetRangeEnd(rangesEnd(rangeHeader, info.Size))
		resume := c.detach() // the reader holds it; it writes no response
		rd.SetResume(func(ctx context.Context, offset int64) (io.ReadCloser, error) {
			return resume.fetchBlobFrom(ctx, offset)
		})
		if sendTo, ok := w.(interface {
			io.Writer
			io.ReaderFrom
		}); ok && wholeFileRequest(r) {
			// The whole blob over a plain connection: the file goes out
			// with sendfile as it grows.
			h := w.Header()
			h.Set("Accept-Ranges", "bytes")
			h.Set("Content-Length", strconv.FormatInt(info.Size, 10))
			w.WriteHeader(http.StatusOK)
			if _, err := rd.SendTo(sendTo); err != nil {
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
	http.ServeContent(bodyWriter{w}, r, "", time.Time{}, er)
	if er.err != nil {
		panic(http.ErrAbortHandler)
	}
}

// fetchBlobFrom asks the upstream for a blob's bytes from offset to its
// end, for a reader whose fill stopped on a disk error.
func (c *pull) fetchBlobFrom(ctx context.Context, offset int64) (io.ReadCloser, error) {
	o := outbound{method: http.MethodGet, path: upstreamPath(c.path), header: http.Header{}, scope: "repository:" + c.path.Name + ":pull", kind: KindBlob}
	o.header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	resp, err := c.p.Upstream.Do(ctx, c.t.up, c.grant, o)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusPartialContent || !strings.HasPrefix(resp.Header.Get("Content-Range"), "bytes "+strconv.FormatInt(offset, 10)+"-") {
		drain(resp.Body)
		return nil, fmt.Errorf("upstream answered %d (Content-Range %q) to a range from byte %d", resp.StatusCode, resp.Header.Get("Content-Range"), offset)
	}
	return resp.Body, nil
}

// rangesEnd is the end (exclusive) of the bytes a Range header asks of a
// blob of size bytes, or 0 when it reaches the blob's end (or asks for
// nothing). A value that does not parse gives 1, which holds back every
// byte until the fill is verified: whatever http.ServeContent makes of it,
// no unverified response can end cleanly. Ranges that start past the end
// are skipped, as http.ServeContent skips them: counting them would hold
// back a byte the response never sends, and let it end before the verdict.
func rangesEnd(header string, size int64) int64 {
	if header == "" {
		return 0
	}
	specs, ok := strings.CutPrefix(header, "bytes=")
	if !ok {
		return 1
	}
	var end int64
	for spec := range strings.SplitSeq(specs, ",") {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		first, last, ok := strings.Cut(spec, "-")
		if !ok {
			return 1
		}
		if first == "" {
			return 0 // a suffix: the blob's last bytes
		}
		f, err := strconv.ParseInt(first, 10, 64)
		if err != nil || f < 0 {
			return 1
		}
		if f >= size {
			continue // not satisfiable: not served
		}
		if last == "" {
			return 0 // open: up to the blob's end
		}
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n < 0 {
			return 1
		}
		if n >= size-1 {
			return 0
		}
		end = max(end, n+1)
	}
	return end
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
