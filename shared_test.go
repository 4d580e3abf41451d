package dockerproxy_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testminio"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestSharedTierThroughCaddy: the Caddyfile's s3 block gives the cache its
// shared tier. A Caddy with one cache directory pulls an image and uploads
// it to the bucket; the same Caddy reloaded with an empty cache directory
// (as another instance would start) serves the image with the upstream
// down. The secret key, from the environment, never reaches the log.
func TestSharedTierThroughCaddy(t *testing.T) {
	minio := testminio.Start(t)
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "library/app", "v1", 2, 32<<10)
	t.Setenv("DOCKER_PROXY_TEST_S3_KEY", testminio.SecretKey)
	site := func(dir string) string {
		return strings.NewReplacer("ENDPOINT", minio.Endpoint, "BUCKET", minio.Bucket, "ID", testminio.AccessKey, "CACHE", dir).Replace(`
http://docker.example.test:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		cache {DIR}/CACHE {
			tag_ttl 1h
			s3 {
				endpoint ENDPOINT
				bucket BUCKET
				region us-east-1
				prefix instances/
				access_key ID
				secret_key {env.DOCKER_PROXY_TEST_S3_KEY}
			}
		}
	}
}`)
	}

	e := startProxy(t, up, site("a"))
	ref := e.ref("docker.example.test", "library/app:v1")
	if err := e.pullImage(ref, nil, img); err != nil {
		t.Fatalf("first instance: %v", err)
	}
	// Uploads run in the background: wait for the image's five objects
	// (manifest, config, two layers) and its tag record.
	layers, _ := img.Layers()
	want := len(layers) + 2
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for len(minio.Objects(t, "instances/blobs/")) < want || len(minio.Objects(t, "instances/tags/")) < 1 {
		select {
		case <-ctx.Done():
			t.Fatalf("bucket holds %q, want %d entries and a tag record", minio.Objects(t, "instances/"), want)
		case <-time.After(50 * time.Millisecond):
		}
	}

	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer up.Faults.Reset()
	e = startProxy(t, up, site("b"))
	if err := e.pullImage(e.ref("docker.example.test", "library/app:v1"), nil, img); err != nil {
		t.Fatalf("second instance, upstream down: %v", err)
	}
	log, err := os.ReadFile(e.logPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(log), testminio.SecretKey) {
		t.Error("the secret key is in Caddy's log")
	}
}
