package dockerproxy

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

// The health endpoint, for load balancers and Kubernetes probes: it says
// whether this handler is provisioned and its cache open and healthy.

// HealthPath is the path the handler answers GET and HEAD on, whatever the
// host, with its health. It is outside /v2/, where no registry client
// asks; before it existed the handler answered it as any unknown path (a
// 404), so no client can have relied on it.
const HealthPath = "/healthz"

// healthState is the body of a HealthPath answer. Cache is "open", "off"
// (cache off: nothing to be healthy), "unavailable" (the directory could
// not be opened at start: every request goes to the upstream), "closed" or
// "disk_error" (a recent disk error: requests pass through uncached while
// it lasts). It names no directory, error or upstream: the endpoint is
// public, as every path of the site is.
type healthState struct {
	Status string `json:"status"` // "ok" or "unavailable"
	Cache  string `json:"cache"`
}

// health tells the handler's health and the HTTP status that says it: 200
// when it serves with its cache as configured, 503 otherwise.
func (h *Handler) health() (healthState, int) {
	switch {
	case h.proxy == nil:
		return healthState{Status: "unavailable", Cache: "unavailable"}, http.StatusServiceUnavailable
	case h.Cache != nil && h.Cache.Disabled:
		return healthState{Status: "ok", Cache: "off"}, http.StatusOK
	case h.dirCache == nil:
		return healthState{Status: "unavailable", Cache: "unavailable"}, http.StatusServiceUnavailable
	}
	if err := h.dirCache.store.Available(); err != nil {
		state := "disk_error"
		if errors.Is(err, blobcache.ErrClosed) {
			state = "closed"
		}
		return healthState{Status: "unavailable", Cache: state}, http.StatusServiceUnavailable
	}
	return healthState{Status: "ok", Cache: "open"}, http.StatusOK
}

// serveHealth answers a request for HealthPath. It reports whether it did:
// only GET and HEAD are answered, other methods go the registry's way.
func (h *Handler) serveHealth(w http.ResponseWriter, r *http.Request) bool {
	if r.URL.Path != HealthPath || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return false
	}
	state, status := h.health()
	body, _ := json.Marshal(state)
	body = append(body, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
	return true
}
