package dockerproxy

// POST /docker_proxy/prefetch on Caddy's admin endpoint: pull images into
// the cache now, with the progress streamed back.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// prefetchAdminRoute is the admin API's prefetch endpoint.
func prefetchAdminRoute() caddy.AdminRoute {
	return caddy.AdminRoute{Pattern: "/docker_proxy/prefetch", Handler: caddy.AdminHandlerFunc(servePrefetch)}
}

// prefetchRequest is the body of a POST /docker_proxy/prefetch.
type prefetchRequest struct {
	Images    []string `json:"images"`
	Platforms []string `json:"platforms"`
}

// The lines of the answer, newline-delimited JSON, each with its event:
// "progress" reports, each image's result ("image"), and at the end the
// count of images by status ("done").
type (
	progressLine struct {
		Event string `json:"event"`
		registry.PrefetchProgress
	}
	imageLine struct {
		Event string `json:"event"`
		registry.PrefetchResult
	}
	doneLine struct {
		Event  string         `json:"event"`
		Counts map[string]int `json:"counts"`
	}
)

// maxPrefetchBody bounds the request body.
const maxPrefetchBody = 1 << 20

// servePrefetch checks the whole request before anything is fetched (a
// bad reference, platform or registry is a 400 with the reason), then
// prefetches the images one after another through the live handler that
// serves each one's registry (the newest, while a reload has two), and
// streams the progress and each image's result as they come. The run ends
// with the request: a client that leaves stops it.
func servePrefetch(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed: POST a list of images", r.Method)}
	}
	jobs, platforms, err := readPrefetchRequest(r)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	out := &lineWriter{w: w, flush: http.NewResponseController(w)}
	counts := map[string]int{}
	runPrefetch(r.Context(), jobs, platforms,
		func(p registry.PrefetchProgress) { out.write(progressLine{Event: "progress", PrefetchProgress: p}) },
		func(res registry.PrefetchResult) {
			counts[res.Status]++
			out.write(imageLine{Event: "image", PrefetchResult: res})
		})
	if r.Context().Err() == nil {
		out.write(doneLine{Event: "done", Counts: counts})
	}
	return nil
}

// readPrefetchRequest parses and checks a request: every image a valid
// reference of a registry that a live handler with a cache serves, every
// platform valid.
func readPrefetchRequest(r *http.Request) ([]prefetchJob, []registry.Platform, error) {
	var req prefetchRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxPrefetchBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, nil, fmt.Errorf("the body must be JSON such as {\"images\": [\"docker.io/library/alpine:3.20\"], \"platforms\": [\"linux/amd64\"]}: %v", err)
	}
	if dec.More() {
		return nil, nil, errors.New("the body must be one JSON object")
	}
	if len(req.Images) == 0 {
		return nil, nil, errors.New("no images: give \"images\": [\"docker.io/library/alpine:3.20\", ...]")
	}
	if len(req.Images) > maxPrefetchImages {
		return nil, nil, fmt.Errorf("%d images, more than %d", len(req.Images), maxPrefetchImages)
	}
	platforms, err := parsePlatforms(req.Platforms)
	if err != nil {
		return nil, nil, err
	}
	handlers := live.all()
	jobs := make([]prefetchJob, 0, len(req.Images))
	for _, s := range req.Images {
		img, err := registry.ParsePullRef(s)
		if err != nil {
			return nil, nil, err
		}
		h := handlerServing(handlers, img.Registry)
		if h == nil {
			return nil, nil, fmt.Errorf("image %s: no docker_proxy handler with a cache serves registry %s", s, img.Registry)
		}
		jobs = append(jobs, prefetchJob{h: h, img: img})
	}
	return jobs, platforms, nil
}

// handlerServing is the newest of handlers (oldest first) that serves
// registry name with a cache, or nil.
func handlerServing(handlers []*Handler, name string) *Handler {
	for i := len(handlers) - 1; i >= 0; i-- {
		h := handlers[i]
		if h.proxy == nil || h.proxy.Cache == nil {
			continue
		}
		if _, ok := h.proxy.Router.ByName(name); ok {
			return h
		}
	}
	return nil
}

// lineWriter writes JSON lines and flushes each, so that the client sees
// the progress as it happens; a write error (the client left) is kept
// quiet: the request's context ends the run.
type lineWriter struct {
	mu    sync.Mutex
	w     io.Writer
	flush *http.ResponseController
}

func (l *lineWriter) write(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(append(b, '\n')); err == nil {
		_ = l.flush.Flush()
	}
}
