package dockerproxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testminio"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// adminEnv is Caddy with the plugin, in this test process, configured
// through its admin API as an operator does: JSON pushed to POST /load.
type adminEnv struct {
	*proxyEnv
	admin    string // the admin endpoint's address
	cacheDir string
	held     net.Listener // a port that no server of Caddy can bind
}

// startAdminProxy loads the first config (through caddy.Load, as
// `caddy run` does) with the admin endpoint on a free loopback port; the
// config's handler is site(cache settings).
func startAdminProxy(t *testing.T, up *testupstream.Upstream, cache map[string]any) *adminEnv {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close() })
	e := &adminEnv{
		proxyEnv: &proxyEnv{t: t, up: up, port: freePort(t), logPath: filepath.Join(dir, "caddy.log"), dataDir: filepath.Join(dir, "data")},
		admin:    "127.0.0.1:" + freePort(t),
		cacheDir: filepath.Join(dir, "cache"),
		held:     held,
	}
	if err := caddy.Load(e.config([]any{e.site(cache)}), true); err != nil {
		t.Fatalf("loading the first config: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	e.transport = testupstream.HostMapTransport(map[string]string{"docker.example.test": "127.0.0.1:" + e.port})
	e.transport.DisableKeepAlives = true
	return e
}

// handler is a docker_proxy handler for the test upstream over the cache
// directory, with these cache settings (dir added).
func (e *adminEnv) handler(cache map[string]any) map[string]any {
	c := map[string]any{"dir": e.cacheDir, "tag_ttl": "5m"}
	for k, v := range cache {
		c[k] = v
	}
	return map[string]any{
		"handler":   "docker_proxy",
		"upstream":  "docker.io",
		"upstreams": map[string]string{"docker.io": e.up.URL},
		"cache":     c,
	}
}

// site is a route of the proxy's server for docker.example.test with
// one handler.
func (e *adminEnv) site(cache map[string]any) map[string]any {
	return e.route("docker.example.test", e.handler(cache))
}

func (e *adminEnv) route(host string, handler map[string]any) map[string]any {
	return map[string]any{
		"match":  []any{map[string]any{"host": []string{host}}},
		"handle": []any{handler},
	}
}

// config is a whole Caddy config: the admin endpoint, the proxy's server
// on its port with the given routes, and extra servers if any.
func (e *adminEnv) config(routes []any, extra ...map[string]any) []byte {
	e.t.Helper()
	servers := map[string]any{"proxy": map[string]any{
		"listen":          []string{"127.0.0.1:" + e.port},
		"routes":          routes,
		"automatic_https": map[string]any{"disable": true},
	}}
	for i, s := range extra {
		servers[fmt.Sprintf("extra%d", i)] = s
	}
	cfg := map[string]any{
		"admin": map[string]any{"listen": e.admin, "config": map[string]any{"persist": false}},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"writer": map[string]any{"output": "file", "filename": e.logPath},
			"level":  "DEBUG",
		}}},
		"apps": map[string]any{"http": map[string]any{"servers": servers}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// load pushes a config to POST /load and returns the status and body.
func (e *adminEnv) load(cfg []byte) (int, string) {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+e.admin+"/load", bytes.NewReader(cfg))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("POST /load: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// rejectedReloads are configs that Caddy must reject, each of which, were
// its settings applied, would give the running cache another bound and
// shared tier (s3: the tier each one names, if any).
func (e *adminEnv) rejectedReloads(s3 map[string]any) []struct {
	name string
	cfg  []byte
} {
	t := e.t
	t.Setenv("DOCKER_PROXY_TEST_EMPTY", "")
	withTier := func(c map[string]any) map[string]any {
		if s3 != nil {
			c["s3"] = s3
		}
		return c
	}
	badS3 := map[string]any{"endpoint": "http://[::1", "bucket": "another-bucket", "access_key": "id", "secret_key": "secret"}
	failing := e.handler(nil)
	failing["credentials"] = []any{map[string]string{"username": "robot", "secret": "{env.DOCKER_PROXY_TEST_EMPTY}"}}
	unbounded := map[string]any{"max_size": 0}
	return []struct {
		name string
		cfg  []byte
	}{
		{"negative max_size", e.config([]any{e.site(withTier(map[string]any{"max_size": -1}))})},
		{"s3 endpoint that is no URL", e.config([]any{e.site(map[string]any{"max_size": 0, "s3": badS3})})},
		{"second site fails to provision", e.config([]any{
			e.site(withTier(map[string]any{"max_size": 0})),
			e.route("other.example.test", failing),
		})},
		{"first site drops the tier, second fails to provision", e.config([]any{
			e.site(unbounded),
			e.route("other.example.test", failing),
		})},
		{"a server fails to start", e.config([]any{e.site(withTier(map[string]any{"max_size": 0}))}, map[string]any{
			"listen":          []string{e.held.Addr().String()},
			"automatic_https": map[string]any{"disable": true},
		})},
	}
}

// cachedLayer reports whether the cache directory holds img's layer.
func (e *adminEnv) cachedLayer(img v1.Image) bool {
	d := layerDigests(e.t, img)[0]
	for _, f := range filesUnder(e.t, filepath.Join(e.cacheDir, "blobs")) {
		if filepath.Base(f) == d.Hex {
			return true
		}
	}
	return false
}

// pull pushes a one-layer image of layerSize bytes to the upstream and
// pulls it through the proxy.
func (e *adminEnv) pull(repo string, layerSize int64) v1.Image {
	e.t.Helper()
	img := e.up.PushRandomImage(e.t, repo, "1", 1, layerSize)
	if err := e.pullImage(e.ref("docker.example.test", repo+":1"), nil, img); err != nil {
		e.t.Fatalf("pulling %s: %v", repo, err)
	}
	return img
}

func TestRejectedReloadKeepsTheCacheBound(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	const bound = 1 << 20
	e := startAdminProxy(t, up, map[string]any{"max_size": bound})
	blobs := filepath.Join(e.cacheDir, "blobs")

	// Three images of one 300 KiB layer fit in 1 MiB; a fourth does not.
	var imgs []v1.Image
	for i := 0; i < 3; i++ {
		imgs = append(imgs, e.pull(fmt.Sprintf("team/app%d", i), 300<<10))
	}
	waitUntil(t, "three images cached", func() bool { return e.cachedLayer(imgs[2]) })

	for _, r := range e.rejectedReloads(nil) {
		if status, body := e.load(r.cfg); status == http.StatusOK {
			t.Fatalf("%s: POST /load accepted the config", r.name)
		} else {
			t.Logf("%s: %d %s", r.name, status, strings.TrimSpace(body))
		}
		// The running config still serves, with its bound: the next
		// image evicts the least recently used one.
		n := len(imgs)
		imgs = append(imgs, e.pull(fmt.Sprintf("team/app%d", n), 300<<10))
		waitUntil(t, r.name+": the new image cached and the cache back under 1 MiB", func() bool {
			return e.cachedLayer(imgs[n]) && dirSize(t, blobs) <= bound
		})
		if e.cachedLayer(imgs[n-3]) {
			t.Errorf("%s: image %d, least recently used, is still cached", r.name, n-3)
		}
		for i := n - 2; i <= n; i++ {
			if !e.cachedLayer(imgs[i]) {
				t.Errorf("%s: image %d, pulled recently, was evicted", r.name, i)
			}
		}
	}

	// A reload that Caddy accepts applies its bound, and evicts down to
	// it before /load answers.
	if status, body := e.load(e.config([]any{e.site(map[string]any{"max_size": 512 << 10})})); status != http.StatusOK {
		t.Fatalf("reload with max_size 512KiB: %d %s", status, body)
	}
	if used := dirSize(t, blobs); used > 512<<10 {
		t.Errorf("after a reload with max_size 512KiB the cache holds %d bytes", used)
	}
	if n := len(imgs); !e.cachedLayer(imgs[n-1]) || e.cachedLayer(imgs[n-2]) {
		t.Errorf("after the reload to 512KiB: last image cached %v, the one before %v; want true, false",
			e.cachedLayer(imgs[n-1]), e.cachedLayer(imgs[n-2]))
	}
}

func TestRejectedReloadKeepsTheSharedTier(t *testing.T) {
	minio := testminio.Start(t)
	up := testupstream.Start(t, testupstream.Options{})
	tier := func(prefix string) map[string]any {
		return map[string]any{
			"endpoint": minio.Endpoint, "bucket": minio.Bucket, "region": "us-east-1", "prefix": prefix,
			"access_key": testminio.AccessKey, "secret_key": testminio.SecretKey,
		}
	}
	e := startAdminProxy(t, up, map[string]any{"s3": tier("live/")})

	// uploadedTo pulls a new image and waits for its layer to reach the
	// bucket (uploads run in the background), under any prefix; it
	// returns the prefixes the layer is under.
	pulls := 0
	uploadedTo := func(what string) []string {
		t.Helper()
		pulls++
		img := e.pull(fmt.Sprintf("team/app%d", pulls), 16<<10)
		d := layerDigests(t, img)[0]
		var under []string
		waitUntil(t, what+": the layer uploaded to the shared tier", func() bool {
			under = nil
			for _, o := range minio.Objects(t, "") {
				if strings.HasSuffix(o, "blobs/sha256/"+d.Hex) {
					under = append(under, strings.TrimSuffix(o, "blobs/sha256/"+d.Hex))
				}
			}
			return len(under) > 0
		})
		return under
	}
	if got := uploadedTo("first config"); len(got) != 1 || got[0] != "live/" {
		t.Fatalf("first config: the layer went to %q, want live/", got)
	}

	for _, r := range e.rejectedReloads(tier("rejected/")) {
		if status, body := e.load(r.cfg); status == http.StatusOK {
			t.Fatalf("%s: POST /load accepted the config", r.name)
		} else {
			t.Logf("%s: %d %s", r.name, status, strings.TrimSpace(body))
		}
		if got := uploadedTo(r.name); len(got) != 1 || got[0] != "live/" {
			t.Errorf("%s: after the rejected reload a new layer went to %q, want live/ only", r.name, got)
		}
	}

	// A reload that Caddy accepts moves the store to its tier.
	if status, body := e.load(e.config([]any{e.site(map[string]any{"s3": tier("next/")})})); status != http.StatusOK {
		t.Fatalf("reload with another prefix: %d %s", status, body)
	}
	if got := uploadedTo("accepted reload"); len(got) != 1 || got[0] != "next/" {
		t.Errorf("after the accepted reload a new layer went to %q, want next/", got)
	}
}

func TestReloadAppliesANewMaxSize(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	cacheDir := t.TempDir()
	block := func(maxSize string) string {
		return strings.Replace(cachedBlock("tag_ttl 5m\n\t\t\tmax_size "+maxSize), "{DIR}/cache", cacheDir, 1)
	}
	e := startProxy(t, up, block("10MiB"))
	for i := 0; i < 4; i++ {
		img := up.PushRandomImage(t, fmt.Sprintf("team/app%d", i), "1", 1, 300<<10)
		if err := e.pullImage(e.ref("docker.example.test", fmt.Sprintf("team/app%d:1", i)), nil, img); err != nil {
			t.Fatal(err)
		}
	}
	// The last layer is committed a moment after its client has it.
	waitUntil(t, "over 1 MiB in the cache before the reload", func() bool {
		return dirSize(t, filepath.Join(cacheDir, "blobs")) >= 1<<20
	})
	startProxy(t, up, block("512KiB")) // a reload over the same directory
	if used := dirSize(t, filepath.Join(cacheDir, "blobs")); used > 512<<10 {
		t.Errorf("after a reload with max_size 512KiB the cache holds %d bytes", used)
	}
}
