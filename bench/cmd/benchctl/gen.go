package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Images are built by hand, as OCI image manifests over uncompressed tar
// layers of random bytes, and pushed to the upstream with the registry
// API (POST, streaming PATCH, PUT ?digest=): one pass over the bytes, no
// temporary file, no client library.

const (
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtConfig   = "application/vnd.oci.image.config.v1+json"
	mtLayer    = "application/vnd.oci.image.layer.v1.tar"
	acceptAll  = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, " +
		"application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"
)

type Desc struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

type Image struct {
	Name           string `json:"name"`
	Repo           string `json:"repo"`
	Tag            string `json:"tag"`
	ManifestDigest string `json:"manifestDigest"`
	Manifest       []byte `json:"-"`
	Config         Desc   `json:"config"`
	Layers         []Desc `json:"layers"`
}

func (im *Image) Size() (n int64) {
	n = im.Config.Size + int64(len(im.Manifest))
	for _, l := range im.Layers {
		n += l.Size
	}
	return
}

// tarLayer writes a one-file tar archive of exactly size bytes (size is a
// multiple of 512 and at least 2048) of seeded random data.
type tarLayer struct {
	hdr  []byte
	rng  *rand.ChaCha8
	left int64 // random bytes still to write
	tail int   // trailer bytes still to write
}

func newTarLayer(size int64, seed [32]byte, name string) *tarLayer {
	var hb bytes.Buffer
	tw := tar.NewWriter(&hb)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size - 512 - 1024,
		ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg, Format: tar.FormatUSTAR})
	tw.Flush()
	return &tarLayer{hdr: hb.Bytes(), rng: rand.NewChaCha8(seed), left: size - 512 - 1024, tail: 1024}
}

func (t *tarLayer) Read(p []byte) (int, error) {
	if len(t.hdr) > 0 {
		n := copy(p, t.hdr)
		t.hdr = t.hdr[n:]
		return n, nil
	}
	if t.left > 0 {
		if int64(len(p)) > t.left {
			p = p[:t.left]
		}
		t.rng.Read(p)
		t.left -= int64(len(p))
		return len(p), nil
	}
	if t.tail > 0 {
		n := min(len(p), t.tail)
		clear(p[:n])
		t.tail -= n
		return n, nil
	}
	return 0, io.EOF
}

func resolve(base *url.URL, loc string) (*url.URL, error) {
	u, err := url.Parse(loc)
	if err != nil {
		return nil, err
	}
	return base.ResolveReference(u), nil
}

// pushBlob streams r to the registry at reg and returns its descriptor.
func pushBlob(hc *http.Client, reg, repo string, r io.Reader, mediaType string) (Desc, error) {
	base, _ := url.Parse(reg)
	resp, err := hc.Post(reg+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return Desc{}, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return Desc{}, fmt.Errorf("start upload: %s", resp.Status)
	}
	loc, err := resolve(base, resp.Header.Get("Location"))
	if err != nil {
		return Desc{}, err
	}
	h := sha256.New()
	cr := &countReader{r: io.TeeReader(r, h)}
	req, _ := http.NewRequest(http.MethodPatch, loc.String(), cr)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = hc.Do(req)
	if err != nil {
		return Desc{}, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusNoContent {
		return Desc{}, fmt.Errorf("upload: %s", resp.Status)
	}
	loc, err = resolve(base, resp.Header.Get("Location"))
	if err != nil {
		return Desc{}, err
	}
	dg := "sha256:" + hex.EncodeToString(h.Sum(nil))
	q := loc.Query()
	q.Set("digest", dg)
	loc.RawQuery = q.Encode()
	req, _ = http.NewRequest(http.MethodPut, loc.String(), nil)
	resp, err = hc.Do(req)
	if err != nil {
		return Desc{}, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return Desc{}, fmt.Errorf("commit upload: %s", resp.Status)
	}
	return Desc{MediaType: mediaType, Digest: dg, Size: cr.n}, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// pushImage builds and pushes repo:tag with one layer per size.
func pushImage(reg, name, repo, tag string, sizes []int64, seed uint64) (*Image, error) {
	hc := &http.Client{Timeout: 30 * time.Minute}
	im := &Image{Name: name, Repo: repo, Tag: tag}
	var diffIDs []string
	for i, sz := range sizes {
		var s [32]byte
		copy(s[:], fmt.Sprintf("%016x/%s/%d", seed, repo, i))
		d, err := pushBlob(hc, reg, repo, newTarLayer(sz, s, fmt.Sprintf("layer%d.bin", i)), mtLayer)
		if err != nil {
			return nil, fmt.Errorf("%s layer %d: %w", repo, i, err)
		}
		im.Layers = append(im.Layers, d)
		diffIDs = append(diffIDs, d.Digest)
	}
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config":  map[string]any{"Cmd": []string{"/bin/true"}, "Labels": map[string]string{"bench.seed": fmt.Sprint(seed)}},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": diffIDs},
		"history": []any{},
	})
	d, err := pushBlob(hc, reg, repo, bytes.NewReader(cfg), mtConfig)
	if err != nil {
		return nil, fmt.Errorf("%s config: %w", repo, err)
	}
	im.Config = d
	man, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": mtManifest, "config": im.Config, "layers": im.Layers,
	})
	req, _ := http.NewRequest(http.MethodPut, reg+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(man))
	req.Header.Set("Content-Type", mtManifest)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("put manifest %s:%s: %s", repo, tag, resp.Status)
	}
	sum := sha256.Sum256(man)
	im.Manifest = man
	im.ManifestDigest = "sha256:" + hex.EncodeToString(sum[:])
	return im, nil
}

func digestHex(d string) string { return strings.TrimPrefix(d, "sha256:") }
