package testupstream

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Mirror is a second registry host that serves the upstream's content the
// way Artifact Registry serves registry.k8s.io's: registry.k8s.io answers
// every manifest and tags/list request with a 307 to a regional host
// (https://us-west1-docker.pkg.dev/v2/k8s-artifacts-prod/images/pause/manifests/3.9),
// whose token realm is its own. Start one with Upstream.StartMirror.
//
// The mirror serves repository <repo> of the upstream as mirror/<repo>
// (/v2/mirror/<repo>/manifests/<ref>, tags/list with its own pagination
// links, referrers), counted in the upstream's Counters like the
// upstream's own answers. It records every Authorization header that
// reaches it, so a test can show that nothing but its own tokens did.
type Mirror struct {
	// URL is the mirror's base URL, "http://127.0.0.1:PORT".
	URL string
	// Realm is the mirror's token endpoint, URL+"/v2/token", or "" for
	// an open mirror.
	Realm string

	opts     MirrorOptions
	u        *Upstream
	listener *listener
	status   atomic.Int64

	mu             sync.Mutex
	issued         map[string]map[string]bool // token -> mirror repositories it may pull
	authorizations []string
	requests       int64
	tokenRequests  int64
}

// mirrorPrefix is where the mirror keeps the upstream's repositories, as
// Artifact Registry keeps registry.k8s.io's under k8s-artifacts-prod/images.
const mirrorPrefix = "mirror/"

// MirrorOptions configure a Mirror.
type MirrorOptions struct {
	// Tokens makes the mirror demand Bearer tokens from its own realm,
	// which issues anonymous ones for every repository that is not
	// private upstream. Without, the mirror is open.
	Tokens bool
	// Base makes the registry send GET /v2/ to the mirror's /v2/ too,
	// before asking for a token.
	Base bool
}

// StartMirror starts a Mirror for a test (closed with t.Cleanup) and makes
// the registry answer authorized manifest, tags/list and referrers
// requests with a 307 to it, keeping the query. Blobs still go to the
// object store.
func (u *Upstream) StartMirror(t testing.TB, opts MirrorOptions) *Mirror {
	t.Helper()
	m := &Mirror{opts: opts, u: u, issued: map[string]map[string]bool{}}
	m.listener = &listener{addr: "127.0.0.1:0", handler: http.HandlerFunc(m.serve)}
	if err := m.listener.start(); err != nil {
		t.Fatalf("testupstream: %v", err)
	}
	t.Cleanup(m.listener.stop)
	m.URL = "http://" + m.listener.addr
	if opts.Tokens {
		m.Realm = m.URL + "/v2/token"
	}
	u.mirror.Store(m)
	t.Cleanup(func() { u.mirror.CompareAndSwap(m, nil) })
	return m
}

// SetStatus makes the mirror answer every registry request (not token
// requests) with code and an HTML body, as a web front end does. 0 turns
// it off.
func (m *Mirror) SetStatus(code int) { m.status.Store(int64(code)) }

// Requests is the number of requests the mirror received, token requests
// included.
func (m *Mirror) Requests() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.requests
}

// TokenRequests is the number of requests to the mirror's realm.
func (m *Mirror) TokenRequests() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.tokenRequests
}

// Authorizations lists the Authorization headers the mirror received, on
// any request, in order.
func (m *Mirror) Authorizations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.authorizations...)
}

// ForeignAuthorizations lists the Authorization headers the mirror
// received that are not one of its own tokens: credentials or tokens meant
// for another host.
func (m *Mirror) ForeignAuthorizations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var foreign []string
	for _, a := range m.authorizations {
		tok, ok := strings.CutPrefix(a, "Bearer ")
		if _, issued := m.issued[tok]; !ok || !issued {
			foreign = append(foreign, a)
		}
	}
	return foreign
}

// redirects tells whether the registry sends a request of kind to the mirror.
func (m *Mirror) redirects(kind string) bool {
	switch kind {
	case "manifest", "tags", "referrers":
		return true
	case "base":
		return m.opts.Base
	}
	return false
}

// redirect answers a registry request with a 307 to the mirror.
func (m *Mirror) redirect(w http.ResponseWriter, r *http.Request) {
	loc := m.URL + "/v2/"
	if rest := strings.TrimPrefix(r.URL.Path, "/v2/"); rest != "" {
		loc += mirrorPrefix + rest
	}
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusTemporaryRedirect)
}

func (m *Mirror) serve(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	m.requests++
	if a := r.Header.Get("Authorization"); a != "" {
		m.authorizations = append(m.authorizations, a)
	}
	m.mu.Unlock()
	if r.URL.Path == "/v2/token" {
		m.serveToken(w, r)
		return
	}
	if code := int(m.status.Load()); code != 0 {
		body := fmt.Sprintf("<!DOCTYPE html>\n<html><title>Error %d</title><body>That's an error.</body></html>\n", code)
		w.Header().Set("Content-Type", "text/html; charset=UTF-8")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
		return
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeRegError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "not supported")
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/"+mirrorPrefix)
	rt := parseRoute("/v2/" + rest)
	if !ok || rt.kind == "other" || rt.kind == "base" || rt.kind == "upload" {
		if m.Realm != "" && !m.authorized(r, "") {
			m.challenge(w, "")
			return
		}
		if r.URL.Path == "/v2/" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, "{}")
			return
		}
		writeRegError(w, http.StatusNotFound, "NOT_FOUND", "not found")
		return
	}
	if m.Realm != "" && !m.authorized(r, mirrorPrefix+rt.repo) {
		m.challenge(w, "repository:"+mirrorPrefix+rt.repo+":pull")
		return
	}
	switch rt.kind {
	case "manifest":
		m.u.serveManifest(w, r, rt)
	case "tags":
		m.u.Counters.tagList.Add(1)
		m.u.serveTags(w, r, rt, "/v2/"+mirrorPrefix)
	case "referrers":
		m.u.Counters.referrers.Add(1)
		inner := r.Clone(r.Context())
		inner.URL.Path = "/v2/" + rest
		m.u.inner.ServeHTTP(w, inner)
	case "blob":
		m.u.serveBlob(w, r, rt)
	}
}

// authorized reports whether r carries a mirror token for repo ("" = any).
func (m *Mirror) authorized(r *http.Request, repo string) bool {
	tok := bearerToken(r)
	m.mu.Lock()
	defer m.mu.Unlock()
	pull, ok := m.issued[tok]
	return ok && (repo == "" || pull[repo])
}

func (m *Mirror) challenge(w http.ResponseWriter, scope string) {
	c := fmt.Sprintf(`Bearer realm=%q,service=%q`, m.Realm, strings.TrimPrefix(m.URL, "http://"))
	if scope != "" {
		c += fmt.Sprintf(`,scope=%q`, scope)
	}
	w.Header().Set("WWW-Authenticate", c)
	writeRegError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
}

// serveToken issues anonymous tokens: pull on every repository of the
// mirror whose upstream repository is not private. A request that brings
// credentials is refused (and recorded by serve).
func (m *Mirror) serveToken(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	m.tokenRequests++
	m.mu.Unlock()
	if m.Realm == "" {
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("Authorization") != "" {
		writeTokenError(w, http.StatusUnauthorized, "unauthorized", "this realm knows no users")
		return
	}
	pull := map[string]bool{}
	for _, s := range r.URL.Query()["scope"] {
		parts := strings.Split(s, ":")
		if len(parts) != 3 || parts[0] != "repository" || !strings.HasPrefix(parts[1], mirrorPrefix) {
			continue
		}
		m.u.auth.mu.Lock()
		public := m.u.auth.mayPull("", strings.TrimPrefix(parts[1], mirrorPrefix))
		m.u.auth.mu.Unlock()
		if public && strings.Contains(","+parts[2]+",", ",pull,") {
			pull[parts[1]] = true
		}
	}
	tok := hex.EncodeToString(randomBytes(24))
	m.mu.Lock()
	m.issued[tok] = pull
	m.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(tokenResponse{Token: tok, AccessToken: tok, ExpiresIn: 300, IssuedAt: time.Now().UTC().Format(time.RFC3339)})
}
