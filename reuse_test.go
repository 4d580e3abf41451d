package dockerproxy_test

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	dockerproxy "github.com/caddy-dockerproxy/dockerproxy"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestReloadReadsNothingAgain: a config reload over the same cache
// directory keeps the open store, its index complete as it was: nothing is
// listed or read again, however many entries the cache holds.
func TestReloadReadsNothingAgain(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	cacheDir := t.TempDir()
	block := func(ttl string) string {
		return strings.Replace(cachedBlock("tag_ttl "+ttl), "{DIR}/cache", cacheDir, 1)
	}
	e := startProxy(t, up, block("5m"))
	img := up.PushRandomImage(t, "team/app", "1", 2, 10<<10)
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatal(err)
	}
	before := dockerproxy.StoreOf(cacheDir)
	if before == nil {
		t.Fatal("no store open for the cache directory")
	}
	<-before.IndexLoaded()
	startProxy(t, up, block("6m")) // a reload over the same directory
	after := dockerproxy.StoreOf(cacheDir)
	if after != before {
		t.Fatal("the reload opened the cache directory again (a new store, a new index to load)")
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, _ := l.Digest()
		if !after.Contains(digest.Digest(d.String())) {
			t.Fatalf("layer %s not in the store after the reload", d)
		}
	}
}
