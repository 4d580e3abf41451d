package registry

// Blobs: hits from the file, misses through one shared fill per digest.

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// serveBlob answers GET and HEAD of a blob: hits from the file, misses
// through one shared fill per digest that streams to every reader.
func (p *Proxy) serveBlob(w http.ResponseWriter, r *http.Request, t target, req Request, grant tokenauth.Grant) {
	c := p.Cache
	if c == nil {
		p.forward(w, r, t, req, grant, statusBypass)
		return
	}
	if p.serveCached(w, r, t, req, grant) {
		return
	}
	if r.Method == http.MethodHead {
		// A HEAD needs no bytes: ask the upstream rather than fill.
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
	o := outboundFor(r, req, http.MethodGet)
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
		defer resp.Body.Close() // also when copyBody aborts the response
		w.WriteHeader(http.StatusOK)
		copyBody(w, resp.Body)
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
	http.ServeContent(bodyWriter{w}, r, "", time.Time{}, er)
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
