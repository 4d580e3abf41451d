package testupstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// nameRE is the distribution reference grammar for repository names.
var nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)

// route is a parsed /v2/ path.
type route struct {
	kind string // "base", "manifest", "blob", "upload", "tags", "referrers", "other"
	repo string
	ref  string // tag/digest for manifests, digest for blobs and referrers
}

func parseRoute(p string) route {
	if p == "/v2/" || p == "/v2" {
		return route{kind: "base"}
	}
	if !strings.HasPrefix(p, "/v2/") {
		return route{kind: "other"}
	}
	el := strings.Split(strings.TrimPrefix(p, "/v2/"), "/")
	n := len(el)
	switch {
	case n >= 3 && el[n-2] == "manifests":
		return route{kind: "manifest", repo: strings.Join(el[:n-2], "/"), ref: el[n-1]}
	case n >= 3 && el[n-2] == "tags" && el[n-1] == "list":
		return route{kind: "tags", repo: strings.Join(el[:n-2], "/")}
	case n >= 3 && el[n-2] == "referrers":
		return route{kind: "referrers", repo: strings.Join(el[:n-2], "/"), ref: el[n-1]}
	case n >= 3 && el[n-2] == "blobs" && el[n-1] == "uploads":
		return route{kind: "upload", repo: strings.Join(el[:n-2], "/")}
	case n >= 4 && el[n-3] == "blobs" && el[n-2] == "uploads":
		return route{kind: "upload", repo: strings.Join(el[:n-3], "/")}
	case n >= 3 && el[n-2] == "blobs":
		return route{kind: "blob", repo: strings.Join(el[:n-2], "/"), ref: el[n-1]}
	}
	return route{kind: "other"}
}

// writeRegError writes a distribution-style JSON error.
func writeRegError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(map[string]any{"errors": []map[string]any{{"code": code, "message": msg, "detail": nil}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func bearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// serveRegistry is the Docker-Hub-like front of the registry listener.
func (u *Upstream) serveRegistry(w http.ResponseWriter, r *http.Request) {
	if u.Faults.hung(w, r) {
		return
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if code := int(u.Faults.regStatus.Load()); code != 0 {
		writeRegError(w, code, statusCode(code), "injected fault")
		return
	}
	rt := parseRoute(r.URL.Path)
	if m := u.mirror.Load(); m != nil && rt.kind == "base" && m.redirects(rt.kind) {
		m.redirect(w, r)
		return
	}
	tok := bearerToken(r)
	switch rt.kind {
	case "other":
		if !u.auth.authorize(tok, "") {
			u.challenge(w, "")
			return
		}
		writeRegError(w, http.StatusNotFound, "NOT_FOUND", "not found")
		return
	case "base":
		if !u.auth.authorize(tok, "") {
			u.challenge(w, "")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write([]byte("{}"))
		}
		return
	}
	if !nameRE.MatchString(rt.repo) || len(rt.repo) > 255 {
		writeRegError(w, http.StatusBadRequest, "NAME_INVALID", "invalid repository name")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// Nobody may push through the front: content is written with the
		// Push helpers, which talk to the inner registry directly.
		u.challenge(w, "repository:"+rt.repo+":pull,push")
		return
	}
	if !u.auth.authorize(tok, rt.repo) {
		u.challenge(w, "repository:"+rt.repo+":pull")
		return
	}
	if m := u.mirror.Load(); m != nil && m.redirects(rt.kind) {
		m.redirect(w, r)
		return
	}
	switch rt.kind {
	case "manifest":
		u.serveManifest(w, r, rt)
	case "blob":
		u.serveBlob(w, r, rt)
	case "tags":
		u.Counters.tagList.Add(1)
		u.serveTags(w, r, rt, "/v2/")
	case "referrers":
		u.Counters.referrers.Add(1)
		u.inner.ServeHTTP(w, r)
	default:
		writeRegError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "not supported")
	}
}

func statusCode(code int) string {
	switch code {
	case http.StatusTooManyRequests:
		return "TOOMANYREQUESTS"
	case http.StatusUnauthorized:
		return "UNAUTHORIZED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	}
	if code >= 500 {
		return "UNAVAILABLE"
	}
	return "UNKNOWN"
}

// challenge answers 401 the way Docker Hub does: on /v2/ without scope, on
// repository requests with the scope and error="insufficient_scope".
func (u *Upstream) challenge(w http.ResponseWriter, scope string) {
	c := fmt.Sprintf(`Bearer realm=%q,service=%q`, u.Realm, u.Service)
	if scope != "" {
		c += fmt.Sprintf(`,scope=%q,error="insufficient_scope"`, scope)
	}
	w.Header().Set("WWW-Authenticate", c)
	writeRegError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
}

// innerGet asks the inner ggcr registry, which ignores Accept, for a path.
func (u *Upstream) innerGet(method, path string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	rec := httptest.NewRecorder()
	u.inner.ServeHTTP(rec, req)
	return rec
}

func (u *Upstream) rateHeaders(w http.ResponseWriter, remaining int64) {
	if remaining < 0 {
		remaining = 0
	}
	w.Header().Set("ratelimit-limit", fmt.Sprintf("%d;w=21600", u.opts.RateLimit))
	w.Header().Set("ratelimit-remaining", fmt.Sprintf("%d;w=21600", remaining))
	w.Header().Set("docker-ratelimit-source", "127.0.0.1")
}

// acceptsIndex reports whether r accepts an index type. An entry with q=0
// says the type is not acceptable (RFC 9110), and the upstream honours it
// as such registries do.
func acceptsIndex(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			mt, params, _ := strings.Cut(part, ";")
			mt = strings.TrimSpace(mt)
			if mt != string(types.OCIImageIndex) && mt != string(types.DockerManifestList) {
				continue
			}
			if q, err := strconv.ParseFloat(qParam(params), 64); err == nil && q == 0 {
				continue
			}
			return true
		}
	}
	return false
}

// qParam returns the q parameter of media type parameters ("" if none).
func qParam(params string) string {
	for _, p := range strings.Split(params, ";") {
		k, v, _ := strings.Cut(p, "=")
		if strings.EqualFold(strings.TrimSpace(k), "q") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func (u *Upstream) serveManifest(w http.ResponseWriter, r *http.Request, rt route) {
	get := r.Method == http.MethodGet
	var used int64
	if get {
		u.Counters.manifestGET.Add(1)
		u.Counters.bump("mget", rt.repo)
		used = u.Counters.rateUsed.Add(1)
		limit := int64(u.opts.RateLimit)
		if u.Faults.tooMany.Load() || (u.opts.EnforceRateLimit && used > limit) {
			u.rateHeaders(w, 0)
			w.Header().Set("Retry-After", strconv.FormatInt(u.Faults.retryAfter.Load(), 10))
			writeRegError(w, http.StatusTooManyRequests, "TOOMANYREQUESTS",
				"You have reached your unauthenticated pull rate limit. https://www.docker.com/increase-rate-limit")
			return
		}
	} else {
		u.Counters.manifestHEAD.Add(1)
		u.Counters.bump("mhead", rt.repo)
		used = u.Counters.rateUsed.Load()
	}
	u.rateHeaders(w, int64(u.opts.RateLimit)-used)

	rec := u.innerGet(http.MethodGet, "/v2/"+rt.repo+"/manifests/"+rt.ref)
	if rec.Code != http.StatusOK {
		copyInner(w, rec, get)
		return
	}
	ct := rec.Header().Get("Content-Type")
	body := rec.Body.Bytes()
	_, notDigest := v1.NewHash(rt.ref)
	if notDigest != nil && types.MediaType(ct).IsIndex() && !acceptsIndex(r) {
		// Like distribution: a client that cannot take a list gets the
		// linux/amd64 image. A cache that drops Accept gets this too.
		child, ok := amd64Child(body)
		if !ok {
			writeRegError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "no linux/amd64 manifest in list and client does not accept lists")
			return
		}
		rec = u.innerGet(http.MethodGet, "/v2/"+rt.repo+"/manifests/"+child.String())
		if rec.Code != http.StatusOK {
			copyInner(w, rec, get)
			return
		}
		ct = rec.Header().Get("Content-Type")
		body = rec.Body.Bytes()
	}
	h, _, _ := v1.SHA256(bytes.NewReader(body))
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Docker-Content-Digest", h.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("ETag", `"`+h.String()+`"`)
	w.WriteHeader(http.StatusOK)
	if get {
		_, _ = w.Write(body)
	}
}

func amd64Child(index []byte) (v1.Hash, bool) {
	im, err := v1.ParseIndexManifest(bytes.NewReader(index))
	if err != nil {
		return v1.Hash{}, false
	}
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == "amd64" && d.MediaType.IsImage() {
			return d.Digest, true
		}
	}
	return v1.Hash{}, false
}

func copyInner(w http.ResponseWriter, rec *httptest.ResponseRecorder, withBody bool) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	if withBody {
		_, _ = w.Write(rec.Body.Bytes())
	}
}

// serveBlob answers HEAD itself (unless Options.RedirectBlobHEADs) and
// sends GET to the object store with a signed URL, as Docker Hub does with
// its CDN.
func (u *Upstream) serveBlob(w http.ResponseWriter, r *http.Request, rt route) {
	if r.Method == http.MethodGet {
		u.Counters.blobGET.Add(1)
		u.Counters.bump("bget", rt.ref)
	} else {
		u.Counters.blobHEAD.Add(1)
		u.Counters.bump("bhead", rt.ref)
	}
	h, err := v1.NewHash(rt.ref)
	if err != nil {
		writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", "invalid digest")
		return
	}
	src, ok := u.blobs.getLinked(rt.repo, h)
	if !ok {
		writeRegError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to registry")
		return
	}
	if r.Method == http.MethodHead && !u.opts.RedirectBlobHEADs {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(src.size(), 10))
		w.Header().Set("Docker-Content-Digest", h.String())
		w.Header().Set("Accept-Ranges", "bytes")
		w.WriteHeader(http.StatusOK)
		return
	}
	w.Header().Set("Docker-Content-Digest", h.String())
	loc := u.SignedBlobURL(h, u.now().Add(u.opts.RedirectTTL))
	if to := u.Faults.blobRedirect.Load(); to != nil {
		loc = *to
	}
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusTemporaryRedirect)
}

type tagList struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// serveTags paginates tags/list itself (ggcr does not send Link and
// mishandles a `last` past the end). Links name the repository under
// prefix, where the host that answers keeps it.
func (u *Upstream) serveTags(w http.ResponseWriter, r *http.Request, rt route, prefix string) {
	rec := u.innerGet(http.MethodGet, "/v2/"+rt.repo+"/tags/list")
	if rec.Code != http.StatusOK {
		copyInner(w, rec, r.Method == http.MethodGet)
		return
	}
	var all tagList
	if err := json.Unmarshal(rec.Body.Bytes(), &all); err != nil {
		writeRegError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	sort.Strings(all.Tags)
	q := r.URL.Query()
	tags := all.Tags
	if last := q.Get("last"); last != "" {
		i := sort.SearchStrings(tags, last)
		for i < len(tags) && tags[i] <= last {
			i++
		}
		tags = tags[i:]
	}
	if ns := q.Get("n"); ns != "" {
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			writeRegError(w, http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", "invalid n")
			return
		}
		if n < len(tags) {
			tags = tags[:n]
			if n > 0 {
				next := url.Values{"n": {ns}, "last": {tags[n-1]}}
				w.Header().Set("Link", fmt.Sprintf(`<%s%s/tags/list?%s>; rel="next"`, prefix, rt.repo, next.Encode()))
			}
		}
	}
	if tags == nil {
		tags = []string{}
	}
	body, _ := json.Marshal(tagList{Name: rt.repo, Tags: tags})
	w.Header().Set("Content-Type", "application/json")
	chunked := u.Faults.listChunked.Load()
	if !chunked {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(http.StatusOK)
	if chunked {
		// Sent at once: net/http would otherwise add the length of a
		// body short enough to end before its buffer fills.
		_ = http.NewResponseController(w).Flush()
	}
	if r.Method != http.MethodGet {
		return
	}
	if cut := u.Faults.listCutAfter.Load(); cut >= 0 && cut < int64(len(body)) {
		_, _ = w.Write(body[:cut])
		hangUp(w)
		return
	}
	_, _ = w.Write(body)
}
