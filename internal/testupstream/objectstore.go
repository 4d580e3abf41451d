package testupstream

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func (u *Upstream) now() time.Time { return time.Now() }

func (u *Upstream) sign(digest string, expires int64) string {
	m := hmac.New(sha256.New, u.signKey)
	fmt.Fprintf(m, "%s\n%d", digest, expires)
	return hex.EncodeToString(m.Sum(nil))
}

// SignedBlobURL returns an object-store URL for digest valid until expires,
// the kind of URL the registry redirects blob GETs to. Tests use it to make
// expired URLs or to call the object store directly.
func (u *Upstream) SignedBlobURL(digest v1.Hash, expires time.Time) string {
	e := expires.Unix()
	return fmt.Sprintf("%s/blobs/%s?expires=%d&sig=%s", u.ObjectStoreURL, digest, e, u.sign(digest.String(), e))
}

// writeS3Error answers like S3 does: an XML body, never JSON.
func writeS3Error(w http.ResponseWriter, status int, code, msg string) {
	body := fmt.Sprintf("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>%s</Message><RequestId>testupstream</RequestId></Error>\n", code, msg)
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// serveObject is the object store: blob bytes behind HMAC-signed URLs. It
// refuses any Authorization header because S3 and CloudFront do, which is
// how a proxy that leaks registry tokens to the redirect target gets caught.
func (u *Upstream) serveObject(w http.ResponseWriter, r *http.Request) {
	if code := int(u.Faults.objStatus.Load()); code != 0 {
		writeS3Error(w, code, "ServiceUnavailable", "injected fault")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeS3Error(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
		return
	}
	if r.Method == http.MethodHead && u.opts.SignedForGETOnly {
		writeS3Error(w, http.StatusForbidden, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
		return
	}
	if r.Header.Get("Authorization") != "" {
		writeS3Error(w, http.StatusForbidden, "InvalidArgument",
			"Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified")
		return
	}
	ds, ok := strings.CutPrefix(r.URL.Path, "/blobs/")
	h, err := v1.NewHash(ds)
	if !ok || err != nil {
		writeS3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	q := r.URL.Query()
	exp, err := strconv.ParseInt(q.Get("expires"), 10, 64)
	if err != nil || !hmac.Equal([]byte(q.Get("sig")), []byte(u.sign(h.String(), exp))) {
		writeS3Error(w, http.StatusForbidden, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
		return
	}
	if u.now().Unix() > exp {
		writeS3Error(w, http.StatusForbidden, "AccessDenied", "Request has expired")
		return
	}
	src, found := u.blobs.get(h)
	if !found {
		writeS3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	if r.Method == http.MethodGet {
		u.Counters.objectGET.Add(1)
		u.Counters.bump("oget", h.String())
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+h.Hex+`"`)
	w.Header().Set("Cache-Control", "public, max-age=14400")
	content := &corruptingReader{rs: src.open(), size: src.size(), f: u.Faults}
	fw := &faultWriter{ResponseWriter: w, r: r, u: u}
	// ServeContent does Range (206), If-Range, conditional requests and HEAD.
	http.ServeContent(fw, r, "", time.Time{}, content)
}

// corruptingReader flips the blob's last byte while Faults.CorruptBlobs is on.
type corruptingReader struct {
	rs   io.ReadSeeker
	off  int64
	size int64
	f    *Faults
}

func (c *corruptingReader) Read(p []byte) (int, error) {
	n, err := c.rs.Read(p)
	if n > 0 && c.f.corrupt.Load() {
		last := c.size - 1
		if last >= c.off && last < c.off+int64(n) {
			p[last-c.off] ^= 0xff
		}
	}
	c.off += int64(n)
	return n, err
}

func (c *corruptingReader) Seek(offset int64, whence int) (int64, error) {
	n, err := c.rs.Seek(offset, whence)
	if err == nil {
		c.off = n
	}
	return n, err
}

// faultWriter applies the body faults (hold, slow, cut) chunk by chunk and
// counts bytes sent.
type faultWriter struct {
	http.ResponseWriter
	r       *http.Request
	u       *Upstream
	sent    int64
	aborted bool
}

func (fw *faultWriter) Unwrap() http.ResponseWriter { return fw.ResponseWriter }

// WriteHeader drops Content-Length while Faults.ChunkBlobs is on, and
// sends the header at once: net/http would otherwise add the length of a
// body short enough to end before its buffer fills.
func (fw *faultWriter) WriteHeader(code int) {
	if !fw.u.Faults.chunked.Load() {
		fw.ResponseWriter.WriteHeader(code)
		return
	}
	fw.Header().Del("Content-Length")
	fw.ResponseWriter.WriteHeader(code)
	_ = http.NewResponseController(fw.ResponseWriter).Flush()
}

const faultChunk = 32 << 10

func (fw *faultWriter) Write(p []byte) (int, error) {
	f := fw.u.Faults
	written := 0
	for len(p) > 0 {
		if fw.aborted {
			return written, http.ErrAbortHandler
		}
		chunk := int64(len(p))
		if chunk > faultChunk {
			chunk = faultChunk
		}
		cut := f.cutAfter.Load()
		if cut >= 0 {
			if fw.sent >= cut {
				fw.abort()
				return written, http.ErrAbortHandler
			}
			chunk = min(chunk, cut-fw.sent)
		}
		hold := f.hold.Load()
		if hold != nil && fw.sent < hold.after {
			chunk = min(chunk, hold.after-fw.sent)
		}
		bps := f.slowBPS.Load()
		if bps > 0 {
			chunk = min(chunk, max(1, bps/20))
		}
		n, err := fw.ResponseWriter.Write(p[:chunk])
		fw.sent += int64(n)
		fw.u.Counters.blobBytes.Add(int64(n))
		written += n
		p = p[n:]
		if err != nil {
			return written, err
		}
		if hold != nil && fw.sent == hold.after {
			if !fw.wait(hold) {
				return written, fw.r.Context().Err()
			}
		}
		if bps > 0 {
			_ = http.NewResponseController(fw.ResponseWriter).Flush()
			t := time.NewTimer(time.Duration(float64(n) / float64(bps) * float64(time.Second)))
			select {
			case <-t.C:
			case <-fw.r.Context().Done():
				t.Stop()
				return written, fw.r.Context().Err()
			}
		}
	}
	return written, nil
}

// wait pauses at a hold point after flushing what was written, so the
// client really holds exactly hold.after bytes.
func (fw *faultWriter) wait(h *Hold) bool {
	_ = http.NewResponseController(fw.ResponseWriter).Flush()
	h.paused.Add(1)
	defer h.paused.Add(-1)
	h.reachedOnce.Do(func() { close(h.reached) })
	select {
	case <-h.release:
		// A client that left while both were ready gets nothing more.
		return fw.r.Context().Err() == nil
	case <-fw.r.Context().Done():
		return false
	}
}

// abort sends what was written so far and closes the TCP connection without
// finishing the body, so the client sees an error, not a short clean body.
func (fw *faultWriter) abort() {
	if fw.aborted {
		return
	}
	fw.aborted = true
	hangUp(fw.ResponseWriter)
}

// hangUp sends what w holds and closes the connection under it, so the
// client sees a cut body, not a short clean one.
func hangUp(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	conn, buf, err := rc.Hijack()
	if err != nil {
		// Cannot hijack (HTTP/2): make net/http reset the stream instead.
		panic(http.ErrAbortHandler)
	}
	_ = buf.Flush()
	_ = conn.Close()
}
