package registry

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// benchHits measures the HTTP hit path (routing, validation, grant, tag
// record or store lookup, access check, response) for GETs of path, after
// one warming request. It reports bytes per second of bodies.
func benchHits(b *testing.B, path func(img v1.Image) string, layerSize int64) {
	up := testupstream.Start(b, testupstream.Options{})
	img := up.PushRandomImage(b, "team/app", "1", 1, layerSize)
	_, srv := newTestProxy(b, up, time.Hour)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	resp, err := client.Get(srv.URL + "/v2/auth?scope=repository:team/app:pull")
	if err != nil {
		b.Fatal(err)
	}
	var tok struct{ Token string }
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	get := func() (int64, string) {
		req, _ := http.NewRequest("GET", srv.URL+path(img), nil)
		req.Header.Set("Authorization", "Bearer "+tok.Token)
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return n, resp.Header.Get("Cache-Status")
	}
	n, _ := get()
	if _, status := get(); status != resultHit.CacheStatus() {
		b.Fatalf("warm request: Cache-Status %q", status)
	}
	b.SetBytes(n)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			get()
		}
	})
}

// BenchmarkManifestHit: a manifest by tag, fresh, from memory.
func BenchmarkManifestHit(b *testing.B) {
	benchHits(b, func(v1.Image) string { return "/v2/team/app/manifests/1" }, 1024)
}

// BenchmarkBlobHit: a 4 MiB layer from the store's file (sendfile).
func BenchmarkBlobHit(b *testing.B) {
	benchHits(b, func(img v1.Image) string {
		layers, _ := img.Layers()
		d, _ := layers[0].Digest()
		return "/v2/team/app/blobs/" + strings.TrimSpace(d.String())
	}, 4<<20)
}

// BenchmarkHandlerManifestHit: the handler alone (no network, no client)
// answering GET and HEAD of a fresh tag whose manifest is in memory; the
// HEAD case starts from a tag resolved by a HEAD.
func BenchmarkHandlerManifestHit(b *testing.B) {
	for _, method := range []string{"GET", "HEAD"} {
		b.Run(method, func(b *testing.B) {
			up := testupstream.Start(b, testupstream.Options{})
			up.PushRandomImage(b, "team/app", "1", 1, 1024)
			p, srv := newTestProxy(b, up, time.Hour)
			resp, _ := http.Get(srv.URL + "/v2/auth?scope=repository:team/app:pull")
			var tok struct{ Token string }
			_ = json.NewDecoder(resp.Body).Decode(&tok)
			resp.Body.Close()
			req := httptest.NewRequest(method, "/v2/team/app/manifests/1", nil)
			req.Host = "127.0.0.1"
			req.Header.Set("Authorization", "Bearer "+tok.Token)
			req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
			for range 2 {
				w := httptest.NewRecorder()
				p.ServeHTTP(w, req)
			}
			w := httptest.NewRecorder()
			p.ServeHTTP(w, req)
			if w.Header().Get("Cache-Status") != resultHit.CacheStatus() {
				b.Fatalf("%d %q", w.Code, w.Header().Get("Cache-Status"))
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				w := httptest.NewRecorder()
				p.ServeHTTP(w, req)
			}
		})
	}
}
