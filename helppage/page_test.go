package helppage

import (
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// domainSite is a host of a proxy with Docker Hub and ghcr.io host names,
// quay.io reached by path only, and a registry of its own.
var domainSite = Site{
	Scheme: "https",
	Host:   "docker.example.com",
	Registries: []Registry{
		{Name: "docker.io", Hosts: []string{"docker.example.com", "docker-staging.example.com"}, PublicURL: "https://registry-1.docker.io"},
		{Name: "ghcr.io", Hosts: []string{"ghcr.example.com"}, PublicURL: "https://ghcr.io"},
		{Name: "quay.io", PublicURL: "https://quay.io"},
		{Hosts: []string{"registry.example.com"}},
	},
}

func serve(t *testing.T, p *Page, method string, site Site) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	if err := p.Serve(w, httptest.NewRequest(method, "/", nil), site); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestPageShowsTheHostsSnippets(t *testing.T) {
	w := serve(t, Default(), "GET", domainSite)
	body := w.Body.String()
	for _, want := range []string{
		// daemon.json, as the page shows it (quotes escaped as HTML)
		`&#34;registry-mirrors&#34;: [&#34;https://docker.example.com&#34;]`,
		// a pull line per registry: host names, the path form, the own registry
		"docker pull docker.example.com/library/alpine:latest",
		"docker pull ghcr.example.com/&lt;repository&gt;:&lt;tag&gt;",
		"docker pull docker.example.com/quay.io/&lt;repository&gt;:&lt;tag&gt;",
		"docker pull registry.example.com/&lt;repository&gt;:&lt;tag&gt;",
		"<code>docker-staging.example.com</code>",
		"<code>docker.example.com/ghcr.io</code>",
		// containerd
		"/etc/containerd/certs.d/docker.io/hosts.toml",
		`server = &#34;https://registry-1.docker.io&#34;`,
		`[host.&#34;https://docker.example.com&#34;]`,
		`[host.&#34;https://ghcr.example.com&#34;]`,
		"/etc/containerd/certs.d/quay.io/hosts.toml",
		// podman: the path form where there is no host name
		`location = &#34;ghcr.example.com&#34;`,
		`location = &#34;docker.example.com/quay.io&#34;`,
		// k3s
		"mirrors:\n  &#34;docker.io&#34;:\n    endpoint:\n      - &#34;https://docker.example.com&#34;",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// The own registry has no name: no mirror configuration names it.
	if strings.Contains(body, "certs.d//") || strings.Contains(body, `prefix = &#34;&#34;`) {
		t.Error("a mirror configuration for the registry without a name")
	}
	// Neither login nor client certificate nor plain HTTP applies.
	for _, unwanted := range []string{"signed-in clients only", "client.cert", "insecure", "plain HTTP"} {
		if strings.Contains(body, unwanted) {
			t.Errorf("page shows %q without cause", unwanted)
		}
	}
}

func TestPageHeadersAreStrictAndSelfContained(t *testing.T) {
	w := serve(t, Default(), "GET", domainSite)
	h := w.Header()
	if w.Code != 200 || h.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("= %d %s", w.Code, h.Get("Content-Type"))
	}
	csp := h.Get("Content-Security-Policy")
	m := regexp.MustCompile(`^default-src 'none'; style-src 'nonce-([A-Za-z0-9_-]{22})'; script-src 'nonce-([A-Za-z0-9_-]{22})'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'$`).FindStringSubmatch(csp)
	if m == nil || m[1] != m[2] {
		t.Fatalf("Content-Security-Policy = %q", csp)
	}
	body := w.Body.String()
	// Every style and script carries this response's nonce; nothing is
	// loaded from elsewhere.
	if n := strings.Count(body, "<style"); n != 1 || !strings.Contains(body, `<style nonce="`+m[1]+`">`) {
		t.Errorf("style elements: %d, with the nonce: %v", n, strings.Contains(body, `<style nonce="`+m[1]+`">`))
	}
	if n := strings.Count(body, "<script"); n != 1 || !strings.Contains(body, `<script nonce="`+m[1]+`">`) {
		t.Errorf("script elements: %d, with the nonce: %v", n, strings.Contains(body, `<script nonce="`+m[1]+`">`))
	}
	for _, external := range []string{"src=", "href=", "@import", "url(", "<link", "<img", "<iframe"} {
		if strings.Contains(body, external) {
			t.Errorf("the page refers to something outside it: %q", external)
		}
	}
	for k, want := range map[string]string{"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Vary": "Accept", "Referrer-Policy": "no-referrer"} {
		if h.Get(k) != want {
			t.Errorf("%s = %q, want %q", k, h.Get(k), want)
		}
	}
	if len(body) > 16<<10 {
		t.Errorf("the page is %d bytes; keep it small", len(body))
	}
	// A new nonce for every response.
	if again := serve(t, Default(), "GET", domainSite).Header().Get("Content-Security-Policy"); again == csp {
		t.Error("two responses share a nonce")
	}
}

func TestPageHEADHasNoBody(t *testing.T) {
	w := serve(t, Default(), "HEAD", domainSite)
	if w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("Content-Length") == "0" {
		t.Errorf("HEAD = %d, %d bytes of body, Content-Length %s", w.Code, w.Body.Len(), w.Header().Get("Content-Length"))
	}
}

func TestPageEscapesNames(t *testing.T) {
	// Names that a configuration or a Host header could never carry,
	// given to the page anyway: they come out as text.
	evil := `x"><script>alert(1)</script><b x='`
	site := Site{Scheme: "https", Host: evil + ".example.com", Registries: []Registry{
		{Name: "docker.io", Hosts: []string{evil + ".example.com"}, PublicURL: "https://registry-1.docker.io"},
		{Name: "<img src=x onerror=alert(2)>", PublicURL: "https://" + evil},
	}, LoginRequired: true, ClientCertificate: true}
	body := serve(t, Default(), "GET", site).Body.String()
	for _, raw := range []string{"<script>alert", "<img", `x"><`, "<b x="} {
		if strings.Contains(body, raw) {
			t.Errorf("the page holds %q unescaped", raw)
		}
	}
	if !strings.Contains(body, "x&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;") || !strings.Contains(body, "&lt;img src=x onerror=alert(2)&gt;") {
		t.Error("the names are not shown escaped")
	}
}

func TestPageLoginAndClientCertificate(t *testing.T) {
	site := domainSite
	site.LoginRequired, site.ClientCertificate = true, true
	body := serve(t, Default(), "GET", site).Body.String()
	for _, want := range []string{
		"docker login docker.example.com\ndocker login docker-staging.example.com\ndocker login ghcr.example.com\ndocker login registry.example.com\n",
		"/etc/docker/certs.d/ghcr.example.com/",
		"/etc/containers/certs.d/docker.example.com/",
		`client = [[&#34;/etc/containerd/certs.d/docker.io/client.cert&#34;, &#34;/etc/containerd/certs.d/docker.io/client.key&#34;]]`,
		"cert_file: /etc/rancher/k3s/client.cert",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestPageOverPlainHTTP(t *testing.T) {
	site := Site{Scheme: "http", Host: "localhost:8080", Registries: []Registry{
		{Name: "docker.io", Hosts: []string{"localhost:8080"}, PublicURL: "https://registry-1.docker.io"},
	}}
	body := serve(t, Default(), "GET", site).Body.String()
	for _, want := range []string{
		`&#34;insecure-registries&#34;: [&#34;localhost:8080&#34;]`,
		`&#34;registry-mirrors&#34;: [&#34;http://localhost:8080&#34;]`,
		"insecure = true",
		`[host.&#34;http://localhost:8080&#34;]`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestParseRejectsTemplatesThatFail(t *testing.T) {
	for name, text := range map[string]string{
		"syntax":          "{{.Host",
		"unknown field":   "{{.Upstreams}}",
		"fails on a site": "{{index .Registries 5}}",
	} {
		if _, err := Parse(text); err == nil {
			t.Errorf("%s: Parse accepted %q", name, text)
		}
	}
	p, err := Parse(`<p>{{.Host}} {{range .Entries}}{{.Address}} {{end}}</p>`)
	if err != nil {
		t.Fatal(err)
	}
	if body := serve(t, p, "GET", domainSite).Body.String(); body != "<p>docker.example.com docker.example.com ghcr.example.com docker.example.com/quay.io registry.example.com </p>" {
		t.Errorf("own template = %q", body)
	}
}
