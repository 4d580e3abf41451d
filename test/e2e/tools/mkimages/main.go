// Command mkimages builds the end-to-end suite's test images from random
// bytes and pushes them to the suite's upstream registries, then writes the
// digests it pushed as JSON (image reference without host -> digest, plus
// per-platform digests of the indexes).
//
// Nothing is downloaded: every layer is a tar of freshly generated random
// files, gzip-compressed once into a temp file (so the large layer is not
// compressed twice), then pushed with go-containerregistry.
//
// Usage:
//
//	mkimages -hub 127.0.0.1:P1 -hub-user admin:pw -ghcr 127.0.0.1:P2 \
//	    -big-mib 200 -work DIR -out expected.json
package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	crand "crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var workDir string

func main() {
	var (
		hub     = flag.String("hub", "", "host:port of the Docker-Hub-like registry (token auth)")
		hubUser = flag.String("hub-user", "", "name:password that may push to -hub")
		ghcr    = flag.String("ghcr", "", "host:port of the ghcr-like registry (anonymous)")
		bigMiB  = flag.Int64("big-mib", 200, "size of the large layer in MiB")
		out     = flag.String("out", "expected.json", "where to write the pushed digests")
	)
	flag.StringVar(&workDir, "work", os.TempDir(), "directory for the compressed layers")
	flag.Parse()
	if *hub == "" || *ghcr == "" {
		log.Fatal("-hub and -ghcr are required")
	}
	var hubAuth authn.Authenticator = authn.Anonymous
	if *hubUser != "" {
		u, p, _ := strings.Cut(*hubUser, ":")
		hubAuth = &authn.Basic{Username: u, Password: p}
	}

	const KiB, MiB = 1 << 10, 1 << 20
	type job struct {
		host string
		auth authn.Authenticator
		repo string
		tags []string
		make func() (any, error) // v1.Image or v1.ImageIndex
	}
	jobs := []job{
		{*hub, hubAuth, "library/e2ebusy", []string{"latest", "1.0"}, func() (any, error) {
			return image("e2ebusy", types.DockerManifestSchema2, "amd64", 256*KiB, 1*MiB, 64*KiB)
		}},
		{*hub, hubAuth, "team/app", []string{"1"}, func() (any, error) {
			return index("team-app", types.OCIImageIndex, types.OCIManifestSchema1, 512*KiB, 1*MiB)
		}},
		{*hub, hubAuth, "team/app", []string{"2"}, func() (any, error) {
			return image("team-app-2", types.DockerManifestSchema2, "amd64", 300*KiB, 100*KiB)
		}},
		{*hub, hubAuth, "team/big", []string{"1"}, func() (any, error) {
			return image("team-big", types.DockerManifestSchema2, "amd64", *bigMiB*MiB, 32*KiB)
		}},
		// Pulled by no client: a prefetch block fetches it.
		{*hub, hubAuth, "team/prefetched", []string{"1"}, func() (any, error) {
			return index("team-prefetched", types.OCIImageIndex, types.OCIManifestSchema1, 300*KiB, 30*KiB)
		}},
		{*hub, hubAuth, "private/secret", []string{"1"}, func() (any, error) {
			return image("private-secret", types.DockerManifestSchema2, "amd64", 200*KiB, 20*KiB)
		}},
		{*ghcr, authn.Anonymous, "org/multi", []string{"1"}, func() (any, error) {
			return index("org-multi", types.OCIImageIndex, types.OCIManifestSchema1, 700*KiB, 300*KiB, 50*KiB)
		}},
		{*ghcr, authn.Anonymous, "org/tool", []string{"1"}, func() (any, error) {
			return image("org-tool-1", types.OCIManifestSchema1, "amd64", 400*KiB, 40*KiB)
		}},
		{*ghcr, authn.Anonymous, "org/tool", []string{"2"}, func() (any, error) {
			return image("org-tool-2", types.DockerManifestSchema2, "amd64", 500*KiB, 50*KiB)
		}},
	}

	result := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, len(jobs))
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			obj, err := j.make()
			if err != nil {
				errs <- fmt.Errorf("%s: build: %w", j.repo, err)
				return
			}
			for _, tag := range j.tags {
				ref, err := name.ParseReference(j.host+"/"+j.repo+":"+tag, name.Insecure)
				if err != nil {
					errs <- err
					return
				}
				opts := []remote.Option{remote.WithAuth(j.auth)}
				var d v1.Hash
				switch o := obj.(type) {
				case v1.Image:
					err = remote.Write(ref, o, opts...)
					if err == nil {
						d, err = o.Digest()
					}
				case v1.ImageIndex:
					err = remote.WriteIndex(ref, o, opts...)
					if err == nil {
						d, err = o.Digest()
					}
					if err == nil {
						im, _ := o.IndexManifest()
						mu.Lock()
						for _, m := range im.Manifests {
							result[j.repo+":"+tag+"@"+m.Platform.OS+"/"+m.Platform.Architecture] = m.Digest.String()
						}
						mu.Unlock()
					}
				}
				if err != nil {
					errs <- fmt.Errorf("push %s: %w", ref, err)
					return
				}
				mu.Lock()
				result[j.repo+":"+tag] = d.String()
				mu.Unlock()
				log.Printf("pushed %s %s (%s)", ref, d, time.Since(start).Round(time.Millisecond))
			}
		}()
	}
	wg.Wait()
	close(errs)
	failed := false
	for err := range errs {
		log.Print(err)
		failed = true
	}
	if failed {
		os.Exit(1)
	}
	b, _ := json.MarshalIndent(result, "", "  ")
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
}

// layer writes a gzip-compressed tar holding one random file of the given
// size (and a small text file naming it) and returns it as a v1.Layer.
func layer(label string, size int64, mt types.MediaType) (v1.Layer, error) {
	f, err := os.CreateTemp(workDir, "layer-*.tar.gz")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	now := time.Now().Truncate(time.Second)
	dir := "e2e/" + label + "/"
	if err := tw.WriteHeader(&tar.Header{Name: "e2e/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now}); err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now}); err != nil {
		return nil, err
	}
	note := []byte(fmt.Sprintf("layer %s, %d random bytes, made %s\n", label, size, now.UTC().Format(time.RFC3339)))
	if err := tw.WriteHeader(&tar.Header{Name: dir + "README", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(note)), ModTime: now}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(note); err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(&tar.Header{Name: dir + "data.bin", Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: now}); err != nil {
		return nil, err
	}
	var seed [32]byte
	crand.Read(seed[:])
	if _, err := io.CopyN(tw, rand.NewChaCha8(seed), size); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return tarball.LayerFromFile(f.Name(), tarball.WithMediaType(mt))
}

// image builds a single-platform image with one layer per size.
func image(label string, mt types.MediaType, arch string, sizes ...int64) (v1.Image, error) {
	layerMT, configMT := types.DockerLayer, types.DockerConfigJSON
	if mt == types.OCIManifestSchema1 {
		layerMT, configMT = types.OCILayer, types.OCIConfigJSON
	}
	img := mutate.MediaType(empty.Image, mt)
	img = mutate.ConfigMediaType(img, configMT)
	for i, s := range sizes {
		l, err := layer(fmt.Sprintf("%s-%s-%d", label, arch, i), s, layerMT)
		if err != nil {
			return nil, err
		}
		img, err = mutate.AppendLayers(img, l)
		if err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	if arch == "arm64" {
		cf.Variant = "v8"
	}
	cf.Created = v1.Time{Time: time.Now().UTC().Truncate(time.Second)}
	cf.Config.Cmd = []string{"/bin/false"}
	cf.Config.Env = []string{"E2E_IMAGE=" + label}
	cf.Config.Labels = map[string]string{"e2e.image": label}
	return mutate.ConfigFile(img, cf)
}

// index builds a linux/amd64 + linux/arm64 index.
func index(label string, mt, imageMT types.MediaType, sizes ...int64) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, mt)
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := image(label, imageMT, arch, sizes...)
		if err != nil {
			return nil, err
		}
		p := &v1.Platform{OS: "linux", Architecture: arch}
		if arch == "arm64" {
			p.Variant = "v8"
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
	}
	return idx, nil
}
