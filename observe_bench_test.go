package dockerproxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// BenchmarkObservedManifestHit measures what observing costs a request
// (the counting writer, the counters, the access log's placeholders): a
// fresh tag's manifest from memory, served by the request path alone
// (Serve) and as the handler serves it (serveObserved), side by side.
func BenchmarkObservedManifestHit(b *testing.B) {
	up := testupstream.Start(b, testupstream.Options{})
	up.PushRandomImage(b, "team/app", "1", 1, 1024)
	b.Setenv("XDG_DATA_HOME", b.TempDir())
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &Handler{
		Upstream: up.URL,
		AuthKey:  "0123456789abcdef0123456789abcdef",
		Cache:    &CacheConfig{Dir: b.TempDir()},
	}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	request := func() *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v2/team/app/manifests/1", nil)
		r.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
		return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	}
	for range 2 {
		w := httptest.NewRecorder()
		h.serveObserved(w, request())
		if w.Code != http.StatusOK {
			b.Fatalf("warming: %d %s", w.Code, w.Body)
		}
	}
	for _, bc := range []struct {
		name  string
		serve func(http.ResponseWriter, *http.Request)
	}{
		{"Serve", func(w http.ResponseWriter, r *http.Request) { h.proxy.Serve(w, r) }},
		{"ServeObserved", h.serveObserved},
	} {
		b.Run(bc.name, func(b *testing.B) {
			w := httptest.NewRecorder()
			bc.serve(w, request())
			if got := w.Header().Get("Cache-Status"); got != "docker_proxy; hit" {
				b.Fatalf("Cache-Status %q", got)
			}
			b.ReportAllocs()
			for b.Loop() {
				bc.serve(httptest.NewRecorder(), request())
			}
		})
	}
}

// BenchmarkObserveResponse: counting one response (its outcome and its
// bytes), the part of observing that every request pays whether or not
// the access log uses the placeholders.
func BenchmarkObserveResponse(b *testing.B) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	m, err := registerMetrics(ctx.GetMetricsRegistry(), []string{"docker.io", "ghcr.io"})
	if err != nil {
		b.Fatal(err)
	}
	res := registry.Result{Outcome: registry.OutcomeHit, Upstream: "docker.io", Kind: registry.KindBlob, Repository: "library/alpine"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.observe(res, 4096)
		}
	})
}
