package testupstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Content is written straight into the inner registry and the blob store,
// bypassing the front: the front then enforces auth for every client, and
// setup traffic never shows up in the Counters.

// putManifest stores raw under repo:ref in the inner registry.
func (u *Upstream) putManifest(repo, ref string, mt types.MediaType, raw []byte) error {
	req := httptest.NewRequest(http.MethodPut, "/v2/"+repo+"/manifests/"+ref, bytes.NewReader(raw))
	req.Header.Set("Content-Type", string(mt))
	rec := httptest.NewRecorder()
	u.inner.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		return fmt.Errorf("testupstream: put manifest %s:%s: %d %s", repo, ref, rec.Code, rec.Body.String())
	}
	return nil
}

// PutRawManifest stores a manifest as given (artifacts, manifests with a
// subject) under repo:ref. Its blobs must already be in repo.
func (u *Upstream) PutRawManifest(repo, ref string, mediaType string, raw []byte) error {
	return u.putManifest(repo, ref, types.MediaType(mediaType), raw)
}

// PutImage stores img (all its blobs, then its manifest) under repo:tag.
// tag may be a digest or "" to store it by digest only.
func (u *Upstream) PutImage(repo, tag string, img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		// A blob already in the store (a generated one, or one shared with
		// another image) is only linked: reading a generated layer here
		// would pull a GiB through memory.
		if u.blobs.link(repo, d) {
			continue
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		u.blobs.put(repo, d, memBlob(data))
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	cd, err := img.ConfigName()
	if err != nil {
		return err
	}
	u.blobs.put(repo, cd, memBlob(cfg))
	return u.putTagged(repo, tag, img)
}

// PutIndex stores idx, every child image or index it holds, and their blobs
// under repo:tag ("" for by digest only).
func (u *Upstream) PutIndex(repo, tag string, idx v1.ImageIndex) error {
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	for _, desc := range im.Manifests {
		switch {
		case desc.MediaType.IsIndex():
			child, err := idx.ImageIndex(desc.Digest)
			if err != nil {
				return err
			}
			if err := u.PutIndex(repo, "", child); err != nil {
				return err
			}
		case desc.MediaType.IsImage():
			child, err := idx.Image(desc.Digest)
			if err != nil {
				return err
			}
			if err := u.PutImage(repo, "", child); err != nil {
				return err
			}
		}
	}
	return u.putTagged(repo, tag, idx)
}

// manifestOf is what images and indexes share: their manifest.
type manifestOf interface {
	RawManifest() ([]byte, error)
	MediaType() (types.MediaType, error)
	Digest() (v1.Hash, error)
}

// putTagged stores m's manifest by digest and, unless tag is "", by tag.
func (u *Upstream) putTagged(repo, tag string, m manifestOf) error {
	raw, err := m.RawManifest()
	if err != nil {
		return err
	}
	mt, err := m.MediaType()
	if err != nil {
		return err
	}
	d, err := m.Digest()
	if err != nil {
		return err
	}
	if err := u.putManifest(repo, d.String(), mt, raw); err != nil {
		return err
	}
	if tag != "" {
		return u.putManifest(repo, tag, mt, raw)
	}
	return nil
}

// PushImage is PutImage for tests: it fails t on error.
func (u *Upstream) PushImage(t testing.TB, repo, tag string, img v1.Image) {
	t.Helper()
	if err := u.PutImage(repo, tag, img); err != nil {
		t.Fatal(err)
	}
}

// PushIndex is PutIndex for tests: it fails t on error.
func (u *Upstream) PushIndex(t testing.TB, repo, tag string, idx v1.ImageIndex) {
	t.Helper()
	if err := u.PutIndex(repo, tag, idx); err != nil {
		t.Fatal(err)
	}
}

// PushRandomImage stores a random Docker schema 2 image with `layers` layers
// of layerSize bytes each under repo:tag and returns it.
func (u *Upstream) PushRandomImage(t testing.TB, repo, tag string, layers int, layerSize int64) v1.Image {
	t.Helper()
	img, err := random.Image(layerSize, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	u.PushImage(t, repo, tag, img)
	return img
}

// PushRandomIndex stores a Docker manifest list under repo:tag with one
// random single-layer image per platform (default linux/amd64 and
// linux/arm64), each child's config carrying its platform, and returns it.
func (u *Upstream) PushRandomIndex(t testing.TB, repo, tag string, platforms ...v1.Platform) v1.ImageIndex {
	t.Helper()
	idx, err := RandomIndex(platforms...)
	if err != nil {
		t.Fatal(err)
	}
	u.PushIndex(t, repo, tag, idx)
	return idx
}

// RandomIndex builds (without storing) a Docker manifest list with one random
// image per platform; default linux/amd64 and linux/arm64.
func RandomIndex(platforms ...v1.Platform) (v1.ImageIndex, error) {
	if len(platforms) == 0 {
		platforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}
	}
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	for _, p := range platforms {
		img, err := random.Image(512, 1)
		if err != nil {
			return nil, err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
		img, err = mutate.ConfigFile(img, cf)
		if err != nil {
			return nil, err
		}
		p := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &p},
		})
	}
	return idx, nil
}

// generatedLayer exposes a GeneratedBlob as an uncompressed layer (media type
// application/vnd.oci.image.layer.v1.tar, so DiffID == Digest). The bytes are
// random, not a tar: registry clients that only copy (ggcr, crane, skopeo)
// are happy, a daemon that unpacks is not.
type generatedLayer struct{ g *GeneratedBlob }

func (l *generatedLayer) Digest() (v1.Hash, error)            { return l.g.Digest, nil }
func (l *generatedLayer) DiffID() (v1.Hash, error)            { return l.g.Digest, nil }
func (l *generatedLayer) Size() (int64, error)                { return l.g.Size, nil }
func (l *generatedLayer) MediaType() (types.MediaType, error) { return types.OCIUncompressedLayer, nil }
func (l *generatedLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(l.g.Open()), nil
}
func (l *generatedLayer) Uncompressed() (io.ReadCloser, error) { return l.Compressed() }

// Layer returns the blob as an uncompressed OCI layer
// (application/vnd.oci.image.layer.v1.tar, DiffID == Digest). The bytes are
// random, not a tar: clients that only copy blobs are happy, one that unpacks
// layers is not.
func (g *GeneratedBlob) Layer() v1.Layer { return &generatedLayer{g} }

// PutGeneratedImage stores under repo:tag an OCI image whose single layer is
// a generated blob of size bytes from seed. Only the digest pass over the
// blob costs time; memory use does not grow with size.
func (u *Upstream) PutGeneratedImage(repo, tag string, seed, size int64) (v1.Image, *GeneratedBlob, error) {
	g, err := NewGeneratedBlob(seed, size)
	if err != nil {
		return nil, nil, err
	}
	img, err := generatedImage(g)
	if err != nil {
		return nil, nil, err
	}
	u.blobs.put(repo, g.Digest, g)
	if err := u.PutImage(repo, tag, img); err != nil {
		return nil, nil, err
	}
	return img, g, nil
}

// PushGeneratedImage is PutGeneratedImage for tests.
func (u *Upstream) PushGeneratedImage(t testing.TB, repo, tag string, seed, size int64) (v1.Image, *GeneratedBlob) {
	t.Helper()
	img, g, err := u.PutGeneratedImage(repo, tag, seed, size)
	if err != nil {
		t.Fatal(err)
	}
	return img, g
}

// generatedImage builds the manifest and config by hand: mutate.Append would
// be fine too, but this keeps the image free of any lazy re-hashing of the
// big layer.
func generatedImage(g *GeneratedBlob) (v1.Image, error) {
	cf := &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		RootFS:       v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{g.Digest}},
		Config:       v1.Config{Cmd: []string{"/bin/true"}},
	}
	cfg, err := json.Marshal(cf)
	if err != nil {
		return nil, err
	}
	cd, cs, err := v1.SHA256(bytes.NewReader(cfg))
	if err != nil {
		return nil, err
	}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: types.OCIConfigJSON, Size: cs, Digest: cd},
		Layers:        []v1.Descriptor{{MediaType: types.OCIUncompressedLayer, Size: g.Size, Digest: g.Digest}},
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&rawImage{manifest: raw, config: cfg, layer: g})
}

// rawImage is a partial.CompressedImageCore over fixed manifest/config bytes.
type rawImage struct {
	manifest, config []byte
	layer            *GeneratedBlob
}

func (r *rawImage) RawConfigFile() ([]byte, error)      { return r.config, nil }
func (r *rawImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (r *rawImage) RawManifest() ([]byte, error)        { return r.manifest, nil }
func (r *rawImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if h == r.layer.Digest {
		return &generatedLayer{r.layer}, nil
	}
	return nil, fmt.Errorf("testupstream: no layer %s", h)
}
