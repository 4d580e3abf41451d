package dockerproxy_test

import (
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// browserAccept is what Chromium sends for a page.
const browserAccept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"

// answer is a response as a client sees it, but for its Date.
type answer struct {
	Status int
	Header http.Header
	Body   string
}

func (e *proxyEnv) answer(method, host, path string, header http.Header) answer {
	e.t.Helper()
	resp, body := e.do(method, host, path, header)
	// Two proxies answer on two ports, which challenges name.
	h := http.Header{}
	for k, vs := range resp.Header {
		for _, v := range vs {
			h.Add(k, strings.ReplaceAll(v, e.port, "PORT"))
		}
	}
	h.Del("Date")
	return answer{resp.StatusCode, h, strings.ReplaceAll(body, e.port, "PORT")}
}

// nonBrowserRequests are the requests of / that must keep today's answers
// with the page on: registry clients, curl, and browsers on hosts that
// are not routed or with a method other than GET and HEAD.
var nonBrowserRequests = []struct {
	name, method, host, path string
	accept                   []string
}{
	{"no Accept", "GET", "docker.example.test", "/", nil},
	{"curl", "GET", "docker.example.test", "/", []string{"*/*"}},
	{"JSON", "GET", "ghcr.example.test", "/", []string{"application/json"}},
	{"manifest types", "GET", "docker.example.test", "/", []string{"application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json"}},
	{"HTML and JSON alike", "GET", "docker.example.test", "/", []string{"text/html, application/json"}},
	{"HTML refused", "GET", "docker.example.test", "/", []string{"text/html;q=0, */*"}},
	{"HEAD, curl", "HEAD", "docker.example.test", "/", []string{"*/*"}},
	{"browser POST", "POST", "docker.example.test", "/", []string{browserAccept}},
	{"browser, unrouted host", "GET", "unknown.example.test", "/", []string{browserAccept}},
	{"browser, unrouted host, /v2/", "GET", "unknown.example.test", "/v2/", []string{browserAccept}},
	{"browser, ns= of no configured registry", "GET", "docker.example.test", "/?ns=evil.example.com", []string{browserAccept}},
	{"browser, /v2/", "GET", "docker.example.test", "/v2/", []string{browserAccept}},
	{"browser, another path", "GET", "docker.example.test", "/index.html", []string{browserAccept}},
}

func answers(e *proxyEnv) []answer {
	var as []answer
	for _, r := range nonBrowserRequests {
		h := http.Header{}
		if r.accept != nil {
			h["Accept"] = r.accept
		}
		as = append(as, e.answer(r.method, r.host, r.path, h))
	}
	return as
}

func TestPageForBrowsersTodaysAnswersForEveryoneElse(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	e := startProxy(t, up, domainBlock)
	before := up.Counters.RegistryRequests()

	resp, body := e.do("GET", "docker.example.test", "/", http.Header{"Accept": {browserAccept}})
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("browser GET / = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "default-src 'none'; ") {
		t.Errorf("Content-Security-Policy = %q", resp.Header.Get("Content-Security-Policy"))
	}
	mirror := "http://docker.example.test:" + e.port
	for _, want := range []string{
		"<h1>docker.example.test:" + e.port + "</h1>",
		`&#34;registry-mirrors&#34;: [&#34;` + mirror + `&#34;]`,
		"docker pull docker.example.test:" + e.port + "/library/alpine:latest",
		"docker pull ghcr.example.test:" + e.port + "/&lt;repository&gt;:&lt;tag&gt;",
		"docker pull quay.example.test:" + e.port + "/",
		"<code>docker-staging.example.test:" + e.port + "</code>",
		"<code>docker.example.test:" + e.port + "/ghcr.io</code>",
		`[host.&#34;http://ghcr.example.test:` + e.port + `&#34;]`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	// The host table's older names are not what to configure today.
	if strings.Contains(body, "registry.docker.example.test") || strings.Contains(body, "hub.example.test") {
		t.Error("the page shows the host table's older names")
	}
	// The upstreams' addresses are the proxy's business.
	if strings.Contains(body, up.URL) || strings.Contains(body, "127.0.0.1") {
		t.Errorf("the page shows an upstream's address %s", up.URL)
	}
	head, headBody := e.do("HEAD", "docker.example.test", "/", http.Header{"Accept": {browserAccept}})
	if head.StatusCode != 200 || headBody != "" || head.Header.Get("Content-Length") != resp.Header.Get("Content-Length") {
		t.Errorf("browser HEAD / = %d, body %q, Content-Length %s (GET: %s)", head.StatusCode, headBody,
			head.Header.Get("Content-Length"), resp.Header.Get("Content-Length"))
	}
	if n := up.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("the page reached the upstream %d times", n)
	}

	withPage := answers(e)
	// The same requests with the page off: the answers as they were
	// before there was a page.
	off := startProxy(t, up, strings.Replace(domainBlock, "cache off", "cache off\n\t\tpage off", 1))
	withoutPage := answers(off)
	for i, r := range nonBrowserRequests {
		if !reflect.DeepEqual(withPage[i], withoutPage[i]) {
			t.Errorf("%s: %s %s%s with the page on = %+v\nwith it off = %+v", r.name, r.method, r.host, r.path, withPage[i], withoutPage[i])
		}
	}
	// And what they were: the redirect to /v2/, the route list, an error.
	if a := withPage[0]; a.Status != 301 || a.Header.Get("Location") != "/v2/" {
		t.Errorf("GET / without Accept = %d %s", a.Status, a.Header.Get("Location"))
	}
	if a := withPage[8]; a.Status != 404 || !strings.Contains(a.Body, `"message":"Available registry routes"`) {
		t.Errorf("browser on an unrouted host = %d %s", a.Status, a.Body)
	}
	if a := withPage[10]; a.Status != 404 || !strings.Contains(a.Body, `"NAME_UNKNOWN"`) {
		t.Errorf("browser GET /?ns=evil.example.com = %d %s", a.Status, a.Body)
	}
	// With the page off, browsers get the redirect too.
	resp, _ = off.do("GET", "docker.example.test", "/", http.Header{"Accept": {browserAccept}})
	if resp.StatusCode != 301 || resp.Header.Get("Location") != "/v2/" {
		t.Errorf("page off: browser GET / = %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestPageShowsServedHostsAndNoSecrets(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	private := testupstream.Start(t, testupstream.Options{})
	// Two of the table's names as site addresses (quay. and the rest
	// are routed, but Caddy does not serve them), a route to a registry
	// given by URL, and configured credentials.
	e := startProxy(t, up, strings.NewReplacer("PRIVATE", private.URL).Replace(`http://docker.example.test:{PORT}, http://ghcr.example.test:{PORT}, http://mirror.example.test:{PORT} {
	docker_proxy {
		domain example.test
		upstream docker.io {UPSTREAM}
		route mirror.example.test PRIVATE
		credentials docker.io hubuser-d0c5 hubsecret-5ec2e7
		cache off
	}
}`))
	_, body := e.do("GET", "ghcr.example.test", "/", http.Header{"Accept": {browserAccept}})
	for _, want := range []string{
		"<h1>ghcr.example.test:" + e.port + "</h1>",
		"docker pull ghcr.example.test:" + e.port + "/",
		`&#34;registry-mirrors&#34;: [&#34;http://docker.example.test:` + e.port + `&#34;]`,
		// the registry given by URL: by its host name only
		"docker pull mirror.example.test:" + e.port + "/&lt;repository&gt;:&lt;tag&gt;",
		// quay.io is configured (domain): through this host's path form
		"docker pull ghcr.example.test:" + e.port + "/quay.io/",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	for _, unwanted := range []string{"quay.example.test", "k8s.example.test", "docker-staging.example.test",
		private.URL, up.URL, "127.0.0.1", "hubuser-d0c5", "hubsecret-5ec2e7"} {
		if strings.Contains(body, unwanted) {
			t.Errorf("the page shows %q", unwanted)
		}
	}

	// On the host of the registry given by URL: it is "this proxy's own
	// registry", never its address.
	_, body = e.do("GET", "mirror.example.test", "/", http.Header{"Accept": {browserAccept}})
	if !strings.Contains(body, "this proxy's own registry") || strings.Contains(body, private.URL) || strings.Contains(body, "127.0.0.1") {
		t.Errorf("the page of the URL route's host: %s", grepLines(body, "registry"))
	}
}

func TestPageOnlyForHostNames(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	// A catch-all site: any Host header reaches the handler.
	e := startProxy(t, up, `http://:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		cache off
	}
}`)
	for _, host := range []string{"docker.example.test", "127.0.0.1"} {
		resp, body := e.do("GET", host, "/", http.Header{"Accept": {browserAccept}})
		if resp.StatusCode != 200 || !strings.Contains(body, "<h1>"+host+":"+e.port+"</h1>") {
			t.Errorf("Host %s: %d", host, resp.StatusCode)
		}
	}
	// A Host header that is no host name gets the redirect, as before.
	for _, host := range []string{"x'y.example.test", "a&b.example.test", "under_score.example.test"} {
		req, _ := http.NewRequest("GET", e.url("docker.example.test", "/"), nil)
		req.Host = host + ":" + e.port
		req.Header.Set("Accept", browserAccept)
		resp, err := (&http.Client{Transport: e.transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatalf("Host %q: %v", host, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 301 {
			t.Errorf("Host %q: %d, want the redirect", host, resp.StatusCode)
		}
	}
}

func TestPageOwnTemplate(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	tmpl := filepath.Join(t.TempDir(), "page.html")
	if err := os.WriteFile(tmpl, []byte(`<!doctype html><title>{{.Host}}</title><p>Ask the platform team.</p>{{range .Entries}}<p>{{.Pull}}</p>{{end}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_PROXY_TEST_PAGE", tmpl)
	e := startProxy(t, up, strings.Replace(domainBlock, "cache off", "cache off\n\t\tpage {env.DOCKER_PROXY_TEST_PAGE}", 1))
	resp, body := e.do("GET", "docker.example.test", "/", http.Header{"Accept": {browserAccept}})
	want := "<!doctype html><title>docker.example.test:" + e.port + "</title><p>Ask the platform team.</p><p>docker pull docker.example.test:" + e.port + "/library/alpine:latest</p>"
	if resp.StatusCode != 200 || !strings.HasPrefix(body, want) || !strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Errorf("own template: %d %q", resp.StatusCode, body)
	}
}

// On a private site (proxy accounts) the page tells how to log in, and a
// site without accounts does not.
func TestPageOfAPrivateSiteSaysHowToLogIn(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	private := startProxy(t, up, `http://docker.example.test:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		users {
			alice `+aliceHash+`
		}
		cache off
	}
}`)
	resp, body := private.do("GET", "docker.example.test", "/", http.Header{"Accept": {browserAccept}})
	login := "docker login docker.example.test:" + private.port
	if resp.StatusCode != 200 || !strings.Contains(body, login) {
		t.Errorf("private site: %d, the page lacks %q: %s", resp.StatusCode, login, grepLines(body, "login"))
	}
	if strings.Contains(body, aliceHash) || strings.Contains(body, "alice") {
		t.Error("the page shows an account")
	}
	// The proxy account's password never goes upstream: no pass-through
	// login for private upstream images here.
	if strings.Contains(body, "passes your credentials") {
		t.Error("a private site offers the pass-through login")
	}

	open := startProxy(t, up, `http://docker.example.test:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		cache off
	}
}`)
	_, body = open.do("GET", "docker.example.test", "/", http.Header{"Accept": {browserAccept}})
	if strings.Contains(body, "signed-in clients only") || !strings.Contains(body, "passes your credentials") {
		t.Errorf("a site without accounts: %s", grepLines(body, "login"))
	}
}
