package dockerproxy

// The admin API: what the cache directories hold, and purging an image,
// on Caddy's admin endpoint (with its access rules: origins, remote admin
// keys). Caddy provisions admin modules before the apps, so every call
// finds the handlers and their stores as they are at that moment (live).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI is the admin.api.docker_proxy module: GET /docker_proxy/cache,
// GET /docker_proxy/images, DELETE /docker_proxy/images/<image> and POST
// /docker_proxy/prefetch.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.docker_proxy",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin API's routes.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/docker_proxy/cache", Handler: caddy.AdminHandlerFunc(serveCacheStats)},
		{Pattern: "/docker_proxy/images", Handler: caddy.AdminHandlerFunc(serveImages)},
		{Pattern: "/docker_proxy/images/", Handler: caddy.AdminHandlerFunc(servePurge)},
		prefetchAdminRoute(), // POST /docker_proxy/prefetch (admin_prefetch.go)
	}
}

// liveCache is a cache directory in use, with the live handlers using it.
type liveCache struct {
	dir      string
	cache    *dirCache
	handlers []*Handler
}

// liveCaches groups the live handlers by cache directory, sorted by
// directory; handlers without a cache are left out.
func liveCaches() []*liveCache {
	byStore := map[*dirCache]*liveCache{}
	var out []*liveCache
	for _, h := range live.all() {
		if h.dirCache == nil || h.proxy == nil || h.proxy.Cache == nil {
			continue
		}
		lc := byStore[h.dirCache]
		if lc == nil {
			lc = &liveCache{dir: h.cacheDir, cache: h.dirCache}
			byStore[h.dirCache] = lc
			out = append(out, lc)
		}
		lc.handlers = append(lc.handlers, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dir < out[j].dir })
	return out
}

// catalog is the directory's store seen through its handlers.
func (lc *liveCache) catalog() *registry.Catalog {
	c := &registry.Catalog{Store: lc.cache.store}
	seen := map[string]bool{}
	for _, h := range lc.handlers {
		c.Caches = append(c.Caches, h.proxy.Cache)
		for _, u := range h.proxy.Router.Upstreams() {
			if k := u.Name + " " + u.String(); !seen[k] {
				seen[k] = true
				c.Upstreams = append(c.Upstreams, u)
			}
		}
	}
	return c
}

// serves reports whether a handler using the directory serves the upstream
// called name.
func (lc *liveCache) serves(name string) bool {
	for _, h := range lc.handlers {
		if _, ok := h.proxy.Router.ByName(name); ok {
			return true
		}
	}
	return false
}

// cacheStats is one directory in GET /docker_proxy/cache.
type cacheStats struct {
	Dir          string         `json:"dir"`
	Bytes        int64          `json:"bytes"`
	DataBytes    int64          `json:"data_bytes"`
	TagBytes     int64          `json:"tag_bytes"`
	MaxSize      int64          `json:"max_size"`
	Entries      int            `json:"entries"`
	TagRecords   int            `json:"tag_records"`
	Fills        int            `json:"fills_in_progress"`
	IndexLoading bool           `json:"index_loading"`
	Upstreams    []upstreamView `json:"upstreams"`
	Disk         healthView     `json:"disk"`
	SharedTier   sharedTierView `json:"shared_tier"`
}

type upstreamView struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

type healthView struct {
	Healthy bool       `json:"healthy"`
	Error   string     `json:"error,omitempty"`
	RetryAt *time.Time `json:"retry_at,omitempty"`
}

type sharedTierView struct {
	Configured     bool `json:"configured"`
	PendingUploads int  `json:"pending_uploads"`
	healthView
}

func serveCacheStats(w http.ResponseWriter, r *http.Request) error {
	if err := onlyMethod(w, r, http.MethodGet); err != nil {
		return err
	}
	if err := queryParams(r); err != nil {
		return err
	}
	out := struct {
		Caches []cacheStats `json:"caches"`
	}{Caches: []cacheStats{}}
	for _, lc := range liveCaches() {
		st := lc.cache.store.Stats()
		cs := cacheStats{
			Dir: lc.dir, Bytes: st.Bytes, DataBytes: st.DataBytes, TagBytes: st.TagBytes, MaxSize: st.MaxSize,
			Entries: st.Entries, TagRecords: st.TagRecords, Fills: st.Fills, IndexLoading: st.IndexLoading,
			Upstreams: []upstreamView{},
			Disk:      healthOf(st.Disk.Healthy, st.Disk.Error, st.Disk.RetryAt),
			SharedTier: sharedTierView{Configured: st.Remote.Configured, PendingUploads: st.Remote.PendingUploads,
				healthView: healthOf(st.Remote.Healthy, st.Remote.Error, st.Remote.RetryAt)},
		}
		for _, u := range lc.catalog().Upstreams {
			cs.Upstreams = append(cs.Upstreams, upstreamView{Name: u.Name, URL: u.String()})
		}
		sort.Slice(cs.Upstreams, func(i, j int) bool { return cs.Upstreams[i].Name < cs.Upstreams[j].Name })
		out.Caches = append(out.Caches, cs)
	}
	return writeJSON(w, out)
}

func healthOf(healthy bool, err string, retryAt time.Time) healthView {
	v := healthView{Healthy: healthy, Error: err}
	if retryAt.After(time.Now()) {
		v.RetryAt = &retryAt
	}
	return v
}

// imagesOfCache is one directory in GET /docker_proxy/images.
type imagesOfCache struct {
	Dir string `json:"dir"`
	registry.Inventory
}

func serveImages(w http.ResponseWriter, r *http.Request) error {
	if err := onlyMethod(w, r, http.MethodGet); err != nil {
		return err
	}
	if err := queryParams(r, "upstream", "repository"); err != nil {
		return err
	}
	q := r.URL.Query()
	upstream, repository := q.Get("upstream"), q.Get("repository")
	if upstream != "" {
		name, perr := registry.CheckUpstreamName(upstream)
		if perr != nil {
			return badRequest(perr)
		}
		upstream = name
	}
	if repository != "" {
		name, perr := registry.CheckRepository(upstream, repository)
		if perr != nil {
			return badRequest(perr)
		}
		repository = name
	}
	out := struct {
		Caches []imagesOfCache `json:"caches"`
	}{Caches: []imagesOfCache{}}
	served := false
	for _, lc := range liveCaches() {
		if upstream != "" && !lc.serves(upstream) {
			continue
		}
		served = true
		out.Caches = append(out.Caches, imagesOfCache{Dir: lc.dir, Inventory: lc.catalog().Images(upstream, repository)})
	}
	if upstream != "" && !served {
		return notServed(upstream)
	}
	return writeJSON(w, out)
}

// purgeMu lets one purge run at a time: each decides what is still needed
// from what the others left.
var purgeMu sync.Mutex

// purgeOfCache is one directory in the answer to a DELETE.
type purgeOfCache struct {
	Dir string `json:"dir"`
	registry.PurgeReport
	// SharedTier says what became of the shared tier's copies.
	SharedTier string `json:"shared_tier,omitempty"`
}

// sharedTierNotPurged is what a purge answers for a directory with a
// shared tier: its copies stay, and may fill this cache again.
const sharedTierNotPurged = "not purged: the shared tier keeps its copies of the tag records, manifests and blobs; " +
	"an instance that misses them locally may take them from there again"

func servePurge(w http.ResponseWriter, r *http.Request) error {
	if err := onlyMethod(w, r, http.MethodDelete); err != nil {
		return err
	}
	if err := queryParams(r); err != nil {
		return err
	}
	ref, perr := registry.ParseImageRef(strings.TrimPrefix(r.URL.Path, "/docker_proxy/images/"))
	if perr != nil {
		return badRequest(perr)
	}
	purgeMu.Lock()
	defer purgeMu.Unlock()
	out := struct {
		Image  string         `json:"image"`
		Caches []purgeOfCache `json:"caches"`
	}{Image: imageName(ref), Caches: []purgeOfCache{}}
	served := false
	for _, lc := range liveCaches() {
		if !lc.serves(ref.Upstream) {
			continue
		}
		served = true
		rep, err := lc.catalog().Purge(ref)
		switch {
		case errors.Is(err, registry.ErrNotCached):
			continue
		case errors.Is(err, registry.ErrIndexLoading):
			w.Header().Set("Retry-After", "5")
			return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: err,
				Message: fmt.Sprintf("cache %s: %v", lc.dir, err)}
		case err != nil:
			return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err, Message: err.Error()}
		}
		pc := purgeOfCache{Dir: lc.dir, PurgeReport: rep}
		if lc.cache.store.Stats().Remote.Configured {
			pc.SharedTier = sharedTierNotPurged
		}
		out.Caches = append(out.Caches, pc)
	}
	switch {
	case !served:
		return notServed(ref.Upstream)
	case len(out.Caches) == 0:
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: registry.ErrNotCached,
			Message: imageName(ref) + ": no tag record nor manifest of it is cached"}
	}
	return writeJSON(w, out)
}

// imageName writes ref back as the DELETE path names it.
func imageName(ref registry.ImageRef) string {
	s := ref.Upstream + "/" + ref.Repository
	switch {
	case ref.Digest != "":
		s += "@" + ref.Digest.String()
	case ref.Tag != "":
		s += ":" + ref.Tag
	}
	return s
}

// onlyMethod refuses any other method with 405 and the Allow header.
func onlyMethod(w http.ResponseWriter, r *http.Request, method string) error {
	if r.Method == method {
		return nil
	}
	w.Header().Set("Allow", method)
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed,
		Err: fmt.Errorf("method %s not allowed on %s; use %s", r.Method, r.URL.Path, method)}
}

// queryParams refuses query parameters other than allowed: a misspelt
// filter must not silently list everything, nor a purge ignore one.
func queryParams(r *http.Request, allowed ...string) error {
	for k, vs := range r.URL.Query() {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("unknown query parameter %q", k)}
		}
		if len(vs) > 1 {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("query parameter %q given %d times", k, len(vs))}
		}
	}
	return nil
}

func badRequest(e *registry.Error) error {
	return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: e, Message: e.Message + detail(e)}
}

// detail adds what the registry error names (the name, tag or digest).
func detail(e *registry.Error) string {
	m, ok := e.Detail.(map[string]string)
	if !ok {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %q", k, m[k]))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func notServed(upstream string) error {
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: registry.ErrUnknownUpstream,
		Message: "no docker_proxy handler with a cache serves upstream " + upstream}
}

func writeJSON(w http.ResponseWriter, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(append(b, '\n'))
	return err
}

// Interface guards.
var _ caddy.AdminRouter = (*AdminAPI)(nil)
