package registry

// Hits: cached entries served from memory or from their file.

import (
	"bytes"
	"io"
	"net/http"
	"strconv"

	"github.com/opencontainers/go-digest"
)

// serveCached answers a request by digest from the cache, if the entry is
// there: the content, or the refusal when this identity may not read it.
func (c *pull) serveCached() (answered bool) {
	h, ok := c.p.Cache.lookup(c.path.Digest)
	if !ok {
		return false
	}
	defer h.Close()
	if !c.denyUnreadable(c.path.Digest) {
		c.serveHit(h, resultHit)
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
func (c *pull) serveHit(h *hit, res Result) {
	w, r := c.w, c.r
	setEntryHeaders(w.Header(), h.Digest, h.MediaType)
	setOutcome(w, c.t, res)
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
