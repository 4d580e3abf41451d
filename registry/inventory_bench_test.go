package registry

import (
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

// inventoryStore is a store holding n images of one upstream, each in a
// repository of its own under one tag: a config and two layers, one of
// them shared by every image.
func inventoryStore(b *testing.B, n int) (*Catalog, []ImageRef) {
	b.Helper()
	store, err := blobcache.Open(blobcache.Options{Dir: b.TempDir(), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	<-store.IndexLoaded()
	u, _ := url.Parse("https://registry-1.docker.io")
	up := Upstream{Name: DockerHub, URL: u}
	put := func(data []byte, mt string, scopes ...string) ocispec.Descriptor {
		d := digest.FromBytes(data)
		if err := store.Put(d, mt, data, scopes...); err != nil {
			b.Fatal(err)
		}
		return ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(data))}
	}
	shared := put([]byte("a layer every image has"), "application/octet-stream")
	refs := make([]ImageRef, n)
	for i := range n {
		name := fmt.Sprintf("team/app%d", i)
		config := put([]byte(fmt.Sprintf(`{"config %d":1}`, i)), "application/octet-stream")
		own := put([]byte(fmt.Sprintf("the layer of image %d", i)), "application/octet-stream")
		m, _ := json.Marshal(manifestDoc{MediaType: "application/vnd.docker.distribution.manifest.v2+json", Config: &config,
			Layers: []ocispec.Descriptor{shared, own}})
		md := put(m, "application/vnd.docker.distribution.manifest.v2+json", accessScope(anonymousIdentity, target{up: up}, name))
		key := up.String() + "\x00" + name + "\x00" + "1" + "\x00" + "application/vnd.docker.distribution.manifest.v2+json"
		if err := store.SetTag(key, blobcache.Tag{Digest: md.Digest, MediaType: md.MediaType, Size: md.Size, Checked: time.Now()}); err != nil {
			b.Fatal(err)
		}
		refs[i] = ImageRef{Upstream: DockerHub, Repository: name, Tag: "1"}
	}
	return &Catalog{Store: store, Upstreams: []Upstream{up}}, refs
}

// BenchmarkInventory measures listing every image of a cache, and purging
// one, at 1,000 and 10,000 cached images: per image listed, per purge.
func BenchmarkInventory(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("list/images=%d", n), func(b *testing.B) {
			c, _ := inventoryStore(b, n)
			b.ResetTimer()
			for range b.N {
				if inv := c.Images("", ""); len(inv.Repositories) != n {
					b.Fatalf("%d repositories listed, want %d", len(inv.Repositories), n)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/image")
		})
		b.Run(fmt.Sprintf("purge/images=%d", n), func(b *testing.B) {
			c, refs := inventoryStore(b, n)
			b.ResetTimer()
			for i := range b.N {
				if i == len(refs) {
					b.StopTimer()
					c, refs = inventoryStore(b, n)
					b.StartTimer()
				}
				rep, err := c.Purge(refs[i%len(refs)])
				if err != nil || len(rep.Removed.Blobs) != 2 {
					b.Fatalf("purge: %+v %v", rep, err)
				}
			}
		})
	}
}
