package registry

// Lists: tags/list and referrers change at any time, so they always go to
// the upstream. Its last good answer is kept only to be served when the
// upstream fails (stale-if-error), to identities that may read it, so that
// `skopeo inspect`, `crane ls` and signature checks work offline too. For
// referrers, a 404 is a good answer too: a registry without the referrers
// API (distribution 2.x and 3.0) says so with it, and clients (oras,
// cosign, notation) then fall back to the sha256-<digest> tag. A tag's 404
// is kept the same way (tags.go), so that the fallback finds the same
// answers offline.

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"

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
	// Status is the upstream's status: 0 for 200, or 404 for referrers
	// of a registry that has no referrers API.
	Status      int      `json:"status,omitempty"`
	ContentType string   `json:"content_type"`
	Links       []string `json:"links,omitempty"`
	Body        []byte   `json:"body"`
}

func (c *pull) listKey() string {
	return "list\x00" + c.t.up.String() + "\x00" + upstreamPath(c.path) + upstreamQuery(c.r, c.path) + "\x00" + acceptKey(c.r.Header.Values("Accept"))
}

// serveList answers tags/list and referrers.
func (c *pull) serveList() {
	if c.p.Cache == nil || c.r.Method != http.MethodGet {
		c.forward(Result{})
		return
	}
	resp, err := c.do(outboundFor(c.r, c.path, http.MethodGet))
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
				c.keepList(0, resp.Header, head)
			}
			// A list too big to keep still reaches the client whole:
			// what was read, then the rest as it comes. relay aborts the
			// client's connection if the rest fails.
			resp.Body = readCloser{io.MultiReader(bytes.NewReader(head), resp.Body), resp.Body}
			c.relay(resp, resultMiss)
			return
		case failedStatus(resp.StatusCode):
			upstreamStatus = resp.StatusCode
			drain(resp.Body)
		case resp.StatusCode == http.StatusNotFound && c.path.Kind == KindReferrers:
			// "No referrers API" (or no such repository): what clients
			// decide their fallback on, kept like a list.
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if rerr != nil {
				err = rerr
				break
			}
			c.keepList(resp.StatusCode, resp.Header, body)
			resp.Body = io.NopCloser(bytes.NewReader(body))
			c.relay(resp, resultMiss)
			return
		default:
			c.relay(resp, resultMiss)
			return
		}
	}
	if c.serveKeptList(upstreamStatus) {
		return
	}
	if err == nil {
		err = &upstreamStatusError{status: upstreamStatus}
	}
	c.writeUpstreamError(err)
}

// keepList stores a good list answer (status 0: 200), with its header h,
// for stale-if-error.
func (c *pull) keepList(status int, h http.Header, body []byte) {
	kept, _ := json.Marshal(keptList{Status: status, ContentType: h.Get("Content-Type"), Links: h.Values("Link"), Body: body})
	d := digest.FromBytes(kept)
	// Kept for this instance's stale answers only: not for the shared tier.
	if err := c.p.Cache.Store.PutLocal(d, listMediaType, kept); err != nil {
		c.p.Logger.Debug("list not kept", zap.Error(err))
		return
	}
	c.confirmRead(d)
	_ = c.p.Cache.Store.SetLocalTag(c.listKey(), blobcache.Tag{Digest: d, MediaType: listMediaType, Size: int64(len(kept)), Checked: c.p.Cache.now()})
}

// serveKeptList serves the last good answer after an upstream failure, if
// this identity may read it: the proxy's own identity fetched it, or the
// upstream confirmed it for these credentials within the offline window.
func (c *pull) serveKeptList(upstreamStatus int) (answered bool) {
	cache := c.p.Cache
	rec, ok := cache.Store.Tag(c.listKey())
	if !ok {
		return false
	}
	if !c.readConfirmed(rec.Digest, tokenauth.OfflineWindow) {
		return false
	}
	h, ok := cache.lookup(rec.Digest)
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
	if c.path.Kind == KindManifest {
		// A tag's last answer was that it does not exist.
		setOutcome(c.w, c.t, resultStale(upstreamStatus))
		WriteError(c.w, &Error{Status: http.StatusNotFound, Code: CodeManifestUnknown, Message: c.path.Reference() + " is not in " + c.path.Name})
		c.p.Logger.Info("served a stale 404 for a tag: upstream failed", zap.String("upstream", c.t.up.Name), zap.String("repository", c.path.Name), zap.String("tag", c.path.Tag))
		return true
	}
	hdr := c.w.Header()
	if kept.ContentType != "" {
		hdr.Set("Content-Type", kept.ContentType)
	}
	for _, l := range kept.Links {
		hdr.Add("Link", rewriteLink(l, c.t))
	}
	hdr.Set("Content-Length", strconv.Itoa(len(kept.Body)))
	setOutcome(c.w, c.t, resultStale(upstreamStatus))
	status := http.StatusOK
	if kept.Status != 0 {
		status = kept.Status
		hdr.Set("Docker-Distribution-Api-Version", "registry/2.0")
	}
	c.w.WriteHeader(status)
	_, _ = c.w.Write(kept.Body)
	c.p.Logger.Info("served a stale list: upstream failed", zap.String("upstream", c.t.up.Name), zap.String("repository", c.path.Name))
	return true
}
