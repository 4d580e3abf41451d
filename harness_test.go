package dockerproxy_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-dockerproxy/dockerproxy"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// proxyEnv is one Caddy with the plugin, running in this test process, in
// front of a Docker-Hub-like test upstream.
type proxyEnv struct {
	t    *testing.T
	up   *testupstream.Upstream
	port string
	// transport dials the made-up host names of the tests (testHosts) at
	// Caddy's port, and other hosts as they are.
	transport *http.Transport
	logPath   string
	dataDir   string
}

// freePort returns a port nothing listens on now (Caddy listens with
// SO_REUSEPORT, so every test takes a fresh one).
func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

var testHosts = []string{
	"docker.example.test", "ghcr.example.test", "quay.example.test", "mirror.example.test",
	"unknown.example.test", "registry.docker.example.test", "hub.example.test", "k8s.example.test",
}

// startProxy runs Caddy with the given site block body. In it, {PORT} is
// Caddy's port and {UPSTREAM} the test upstream's URL.
func startProxy(t *testing.T, up *testupstream.Upstream, siteBody string) *proxyEnv {
	t.Helper()
	return startCaddy(t, up, siteBody, "off")
}

// startProxyAdmin is startProxy with Caddy's admin endpoint on, at the
// address it returns (http://127.0.0.1:PORT).
func startProxyAdmin(t *testing.T, up *testupstream.Upstream, siteBody string) (*proxyEnv, string) {
	t.Helper()
	admin := "127.0.0.1:" + freePort(t)
	return startCaddy(t, up, siteBody, admin), "http://" + admin
}

// startCaddy runs Caddy with the site block body and the global admin
// option given ("off", or an address).
func startCaddy(t *testing.T, up *testupstream.Upstream, siteBody, admin string) *proxyEnv {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	e := &proxyEnv{t: t, up: up, port: freePort(t), logPath: filepath.Join(dir, "caddy.log"), dataDir: filepath.Join(dir, "data")}
	upstreamURL := ""
	if up != nil {
		upstreamURL = up.URL
	}
	body := strings.NewReplacer("{PORT}", e.port, "{UPSTREAM}", upstreamURL, "{DIR}", dir).Replace(siteBody)
	caddyfile := fmt.Sprintf(`{
	admin %s
	skip_install_trust
	auto_https off
	persist_config off
	log {
		output file %s
		level DEBUG
	}
	servers {
		trusted_proxies static 127.0.0.2/32
	}
}
%s
`, admin, e.logPath, body)
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfg, warnings, err := adapter.Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	for _, w := range warnings {
		t.Logf("Caddyfile warning: %s", w.Message)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, cfg)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	hosts := map[string]string{}
	for _, h := range testHosts {
		hosts[h] = "127.0.0.1:" + e.port
	}
	e.transport = testupstream.HostMapTransport(hosts)
	e.transport.DisableKeepAlives = true
	return e
}

// url is an address of the proxy under one of the test host names.
func (e *proxyEnv) url(host, path string) string {
	return "http://" + host + ":" + e.port + path
}

// do sends a request to the proxy and returns the response with its body
// read.
func (e *proxyEnv) do(method, host, path string, header http.Header) (*http.Response, string) {
	e.t.Helper()
	return e.doBody(method, host, path, header, "")
}

// doBody is do with a request body.
func (e *proxyEnv) doBody(method, host, path string, header http.Header, body string) (*http.Response, string) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.url(host, path), rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{
		Transport:     e.transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}).Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	respBody, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		e.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, string(respBody)
}

// ref names an image as a client of the proxy would: host:port/repo:tag.
func (e *proxyEnv) ref(host, repoAndTag string) name.Reference {
	e.t.Helper()
	r, err := name.ParseReference(host+":"+e.port+"/"+repoAndTag, name.Insecure)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *proxyEnv) remoteOptions(auth authn.Authenticator) []remote.Option {
	if auth == nil {
		auth = authn.Anonymous
	}
	return []remote.Option{remote.WithTransport(e.transport), remote.WithAuth(auth)}
}

// pullImage pulls an image through the proxy with a real registry client
// and checks every byte against want: manifest digest, config, and each
// layer's bytes hashed here.
func (e *proxyEnv) pullImage(ref name.Reference, auth authn.Authenticator, want v1.Image) error {
	img, err := remote.Image(ref, e.remoteOptions(auth)...)
	if err != nil {
		return err
	}
	return testupstream.SameImage(img, want)
}

// logContains reports whether Caddy's log file contains s.
func (e *proxyEnv) logContains(s string) bool {
	b, err := os.ReadFile(e.logPath)
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.Contains(string(b), s)
}

// netDialer dials from a chosen local address (to be a trusted proxy).
type netDialer struct{ local string }

func (d *netDialer) dialTo(addr string) func(ctx context.Context, network, _ string) (net.Conn, error) {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(d.local)}}
		return nd.DialContext(ctx, network, addr)
	}
}

// waitUntil polls cond until it holds: a way to reach a state, never a
// timing assertion (it fails only after a generous minute).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// cachedBlock proxies the test upstream as Docker Hub with the cache on.
func cachedBlock(options string) string {
	return `http://:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		cache {DIR}/cache {
			` + options + `
		}
	}
}`
}

// get does an authenticated request with a token from the proxy.
func (e *proxyEnv) get(method, path, token string, header http.Header) (*http.Response, string) {
	e.t.Helper()
	h := http.Header{}
	for k, v := range header {
		h[k] = v
	}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	return e.do(method, "docker.example.test", path, h)
}

func layerDigests(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var ds []v1.Hash
	for _, l := range layers {
		d, _ := l.Digest()
		ds = append(ds, d)
	}
	return ds
}

// readBlob GETs a blob and returns its sha256 and length, or the error
// that ended the transfer.
func (e *proxyEnv) readBlob(path, token string, header http.Header) (sum string, n int64, status string, err error) {
	return e.readBlobCounting(path, token, header, nil)
}

// readBlobCounting is readBlob that adds one to responded, if not nil, as
// soon as the response's headers have arrived: the proxy sends them once
// the request has found its place (a hit, the fill it leads or joins).
func (e *proxyEnv) readBlobCounting(path, token string, header http.Header, responded *atomic.Int64) (sum string, n int64, status string, err error) {
	req, _ := http.NewRequest("GET", e.url("docker.example.test", path), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range header {
		req.Header[k] = v
	}
	tr := e.transport.Clone()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", 0, "", err
	}
	defer resp.Body.Close()
	if responded != nil {
		responded.Add(1)
	}
	h := sha256.New()
	n, err = io.Copy(h, resp.Body)
	if err == nil && resp.StatusCode/100 != 2 {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, resp.Header.Get("Cache-Status"), err
}

func (e *proxyEnv) dataDirParent() string { return filepath.Dir(e.dataDir) }

// filesUnder lists the data files under dir (blobs and temp files; tag
// records and empty directories do not count).
func filesUnder(t *testing.T, dir string) []string {
	var files []string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.Contains(p, string(filepath.Separator)+"tags"+string(filepath.Separator)) {
			files = append(files, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	return files
}

func blobPaths(repo string, ds []v1.Hash) []string {
	var ps []string
	for _, d := range ds {
		ps = append(ps, "/v2/"+repo+"/blobs/"+d.String())
	}
	return ps
}

func dirSize(t *testing.T, dir string) int64 {
	var total int64
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.HasSuffix(p, ".json") {
			total += fi.Size()
		}
		return nil
	})
	return total
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// domainBlock is one site block serving the seeds' host table on
// example.test, with Docker Hub and ghcr.io pointed at the test upstream.
const domainBlock = `http://:{PORT} {
	docker_proxy {
		domain example.test
		upstream docker.io {UPSTREAM}
		upstream ghcr.io {UPSTREAM}
		cache off
	}
}`

func pullIndex(t *testing.T, e *proxyEnv, ref interface{ String() string }, want v1.ImageIndex) {
	t.Helper()
	r := e.ref(strings.SplitN(ref.String(), ":", 2)[0], strings.SplitN(ref.String(), "/", 2)[1])
	got, err := remote.Index(r, e.remoteOptions(nil)...)
	if err != nil {
		t.Fatalf("index: %v", err)
	}
	gd, _ := got.Digest()
	wd, _ := want.Digest()
	if gd != wd {
		t.Fatalf("index digest %s, want %s", gd, wd)
	}
	wm, _ := want.IndexManifest()
	for _, desc := range wm.Manifests {
		wi, _ := want.Image(desc.Digest)
		gi, err := got.Image(desc.Digest)
		if err != nil {
			t.Fatalf("child %s: %v", desc.Digest, err)
		}
		if err := testupstream.SameImage(gi, wi); err != nil {
			t.Fatalf("child %s (%s): %v", desc.Digest, desc.Platform, err)
		}
	}
}

// loginToken gets a token for a logged-in client from the proxy.
func loginToken(t *testing.T, e *proxyEnv, user, pass, repo string) string {
	t.Helper()
	return loginTokenOn(t, e, "docker.example.test", user, pass, repo)
}

// loginTokenOn is loginToken on another host of the proxy.
func loginTokenOn(t *testing.T, e *proxyEnv, host, user, pass, repo string) string {
	t.Helper()
	h := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}}
	resp, body := e.do("GET", host, "/v2/auth?scope=repository:"+repo+":pull", h)
	var tr struct{ Token string }
	if err := json.Unmarshal([]byte(body), &tr); err != nil || resp.StatusCode != 200 || tr.Token == "" {
		t.Fatalf("login token: %d %s", resp.StatusCode, body)
	}
	return tr.Token
}

// anonymousToken gets a token from the proxy's endpoint, as clients do.
func anonymousToken(t *testing.T, e *proxyEnv, host, repo string) string {
	t.Helper()
	resp, body := e.do("GET", host, "/v2/auth?scope=repository:"+repo+":pull", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("token: %d %s", resp.StatusCode, body)
	}
	var tr struct{ Token string }
	_ = json.Unmarshal([]byte(body), &tr)
	return tr.Token
}

func isStatus(err error, status int) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == status
}
