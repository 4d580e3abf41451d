package helppage

import (
	"bytes"
	"crypto/rand"
	_ "embed" // the built-in page
	"encoding/base64"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
)

// Site describes one host of the proxy, as the page tells it to a visitor.
// Everything in it is shown: only what an anonymous visitor could learn
// from the registry API belongs here, never credentials or the internal
// addresses of upstreams.
type Site struct {
	// Scheme is how the browser reached the host: "https" or "http".
	Scheme string
	// Host is the host the browser asked for, with the port it used if
	// any (docker.example.com, localhost:8443).
	Host string
	// Registries are the registries this host reaches. The first is the
	// one the host serves at its root, if it serves one.
	Registries []Registry
	// LoginRequired says that the proxy serves only clients that log in
	// (docker login <host>).
	LoginRequired bool
	// ClientCertificate says that the browser's connection carried a
	// client certificate that the server verified: the proxy's clients
	// need one too.
	ClientCertificate bool
}

// Registry is one registry the host reaches.
type Registry struct {
	// Name is the registry's public name (docker.io, ghcr.io). Empty for
	// a registry that the proxy knows by an address it does not show: a
	// host name of the proxy is then the only way to it.
	Name string
	// Hosts are host names of the proxy (with the port clients use) that
	// serve the registry at their root, the one to prefer first. Without
	// any, the registry is reached on Site.Host under its name as the
	// first path component (docker.example.com/ghcr.io/owner/image).
	Hosts []string
	// PublicURL is the registry's own public API address
	// (https://registry-1.docker.io), where containerd goes when the
	// proxy fails. Empty when Name is.
	PublicURL string
}

// Page renders and serves a page template.
type Page struct {
	tmpl *template.Template
}

//go:embed page.html
var builtinPage string

// Default returns the built-in page.
func Default() *Page {
	p, err := Parse(builtinPage)
	if err != nil {
		panic("helppage: the built-in page does not render: " + err.Error())
	}
	return p
}

// Parse makes a page of an html/template text, which is executed with a
// Data. It is tried on an example site, so that a template that fails to
// execute fails here, not on a visitor.
func Parse(text string) (*Page, error) {
	tmpl, err := template.New("page").Parse(text)
	if err != nil {
		return nil, err
	}
	p := &Page{tmpl: tmpl}
	for _, site := range exampleSites {
		if _, err := p.render(site, "nonce"); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// exampleSites try a template with every branch of the data set.
var exampleSites = []Site{
	{Scheme: "https", Host: "docker.example.com", LoginRequired: true, ClientCertificate: true, Registries: []Registry{
		{Name: "docker.io", Hosts: []string{"docker.example.com"}, PublicURL: "https://registry-1.docker.io"},
		{Name: "ghcr.io", PublicURL: "https://ghcr.io"},
		{Hosts: []string{"registry.example.com"}},
	}},
	{Scheme: "http", Host: "localhost:8080"},
}

func (p *Page) render(site Site, nonce string) ([]byte, error) {
	var buf bytes.Buffer
	if err := p.tmpl.Execute(&buf, newData(site, nonce)); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Serve answers a GET or HEAD with the page for site.
//
// The page is self-contained and its policy allows nothing else: no
// fetches, frames, forms or plugins; its one style sheet and script run
// only with the response's nonce. It is never cached: it depends on Host,
// Accept and the connection, and its nonce is new each time.
func (p *Page) Serve(w http.ResponseWriter, r *http.Request, site Site) error {
	nonce, err := newNonce()
	if err != nil {
		return err
	}
	body, err := p.render(site, nonce)
	if err != nil {
		return fmt.Errorf("rendering the page: %w", err)
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'nonce-"+nonce+"'; script-src 'nonce-"+nonce+
		"'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	h.Set("Vary", "Accept")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return nil
}

func newNonce() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	// URL-safe: the attribute then holds the nonce as the header does,
	// with nothing for html/template to escape.
	return base64.RawURLEncoding.EncodeToString(b), nil
}
