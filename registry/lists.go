package registry

// Lists: tags/list and referrers change at any time, so they always go to
// the upstream. Its last good answer is kept only to be served when the
// upstream fails (stale-if-error), to identities that may read it, so that
// `skopeo inspect`, `crane ls` and signature checks work offline too.

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// maxListSize bounds a list answer the proxy keeps; a bigger one (the tag
// lists of large registries) is streamed to the client and not kept.
const maxListSize = 4 << 20

// readCloser reads from one reader and closes another.
type readCloser struct {
	io.Reader
	io.Closer
}

// listMediaType marks a kept list answer in the store.
const listMediaType = "application/vnd.docker-proxy.list.v1+json"

// keptList is a list answer as kept in the store: what the client needs to
// see it again as the upstream sent it.
type keptList struct {
	ContentType string   `json:"content_type"`
	Links       []string `json:"links,omitempty"`
	Body        []byte   `json:"body"`
}

func listKey(t target, req APIPath, r *http.Request) string {
	return "list\x00" + t.up.String() + "\x00" + upstreamPath(req) + upstreamQuery(r, req) + "\x00" + acceptKey(r.Header.Values("Accept"))
}

// serveList answers tags/list and referrers.
func (p *Proxy) serveList(w http.ResponseWriter, r *http.Request, t target, req APIPath, grant tokenauth.Grant) {
	if p.Cache == nil || r.Method != http.MethodGet {
		p.forward(w, r, t, req, grant, Result{})
		return
	}
	resp, err := p.Upstream.Do(r.Context(), t.up, grant, outboundFor(r, req, http.MethodGet))
	upstreamStatus := 0
	if err == nil {
		switch {
		case resp.StatusCode == http.StatusOK:
			head, rerr := io.ReadAll(io.LimitReader(resp.Body, maxListSize+1))
			if rerr != nil {
				// Nothing went to the client yet: this is an upstream
				// failure like any other.
				resp.Body.Close()
				err = rerr
				break
			}
			if len(head) <= maxListSize {
				p.keepList(t, req, grant, listKey(t, req, r), resp.Header, head)
			}
			// A list too big to keep still reaches the client whole:
			// what was read, then the rest as it comes. relay aborts the
			// client's connection if the rest fails.
			resp.Body = readCloser{io.MultiReader(bytes.NewReader(head), resp.Body), resp.Body}
			p.relay(w, r, t, req, resp, resultMiss)
			return
		case failedStatus(resp.StatusCode):
			upstreamStatus = resp.StatusCode
			drain(resp.Body)
		default:
			p.relay(w, r, t, req, resp, resultMiss)
			return
		}
	}
	if p.serveKeptList(w, r, t, req, grant, upstreamStatus) {
		return
	}
	if err == nil {
		err = &upstreamStatusError{status: upstreamStatus}
	}
	p.writeUpstreamError(w, t, err)
}

func (p *Proxy) keepList(t target, req APIPath, grant tokenauth.Grant, key string, h http.Header, body []byte) {
	kept, _ := json.Marshal(keptList{ContentType: h.Get("Content-Type"), Links: h.Values("Link"), Body: body})
	d := digest.FromBytes(kept)
	// Kept for this instance's stale answers only: not for the shared tier.
	if err := p.Cache.Store.PutLocal(d, listMediaType, kept); err != nil {
		p.Logger.Debug("list not kept", zap.Error(err))
		return
	}
	p.confirmRead(grant, t, req.Name, d)
	_ = p.Cache.Store.SetLocalTag(key, blobcache.Tag{Digest: d, MediaType: listMediaType, Size: int64(len(kept)), Checked: time.Now()})
}

// serveKeptList serves the last good answer after an upstream failure, if
// this identity may read it: the proxy's own identity fetched it, or the
// upstream confirmed it for these credentials within the offline window.
func (p *Proxy) serveKeptList(w http.ResponseWriter, r *http.Request, t target, req APIPath, grant tokenauth.Grant, upstreamStatus int) bool {
	c := p.Cache
	rec, ok := c.Store.Tag(listKey(t, req, r))
	if !ok {
		return false
	}
	if !p.readConfirmed(grant, t, req.Name, rec.Digest, offlineAccessWindow) {
		return false
	}
	h, ok := c.lookup(rec.Digest)
	if !ok {
		return false
	}
	raw := h.body
	if h.blob != nil {
		var err error
		raw, err = io.ReadAll(io.LimitReader(h.blob.File, maxListSize*2))
		if err != nil {
			h.Close()
			return false
		}
	}
	h.Close()
	var kept keptList
	if err := json.Unmarshal(raw, &kept); err != nil {
		return false
	}
	hdr := w.Header()
	if kept.ContentType != "" {
		hdr.Set("Content-Type", kept.ContentType)
	}
	for _, l := range kept.Links {
		hdr.Add("Link", rewriteLink(l, t))
	}
	hdr.Set("Content-Length", strconv.Itoa(len(kept.Body)))
	setOutcome(w, t, resultStale(upstreamStatus))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(kept.Body)
	p.Logger.Info("served a stale list: upstream failed", zap.String("upstream", t.up.Name), zap.String("repository", req.Name))
	return true
}
