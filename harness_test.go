package dockerproxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

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
	admin off
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
`, e.logPath, body)
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
