package dockerproxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/helppage"
	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// PageConfig configures the page that a browser gets at GET / of a host
// the handler routes. Registry clients never see it: they keep the
// redirect to /v2/.
type PageConfig struct {
	// Disabled turns the page off: browsers get the redirect to /v2/,
	// as every other client does.
	Disabled bool `json:"disabled,omitempty"`
	// Template is a file holding the operator's own page, an
	// html/template executed with a helppage.Data. Placeholders such as
	// {env.PAGE_TEMPLATE} are expanded at provision. Empty: the built-in
	// page.
	Template string `json:"template,omitempty"`
}

func (c *PageConfig) check() error {
	if c != nil && c.Disabled && c.Template != "" {
		return errors.New("page: a template for a page that is off")
	}
	return nil
}

// provisionPage returns the function that serves the page, or nil when
// it is off. A template that cannot be read, parsed or executed is a
// config error.
func (h *Handler) provisionPage(repl *caddy.Replacer, router *registry.Router) (func(http.ResponseWriter, *http.Request) bool, error) {
	if h.Page != nil && h.Page.Disabled {
		return nil, nil
	}
	page := helppage.Default()
	if h.Page != nil && h.Page.Template != "" {
		path := repl.ReplaceKnown(h.Page.Template, "")
		text, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("page: reading template: %v", err)
		}
		if page, err = helppage.Parse(string(text)); err != nil {
			return nil, fmt.Errorf("page: template %s: %v", path, err)
		}
	}
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !helppage.PrefersHTML(r.Header.Values("Accept")) {
			return false
		}
		site, ok := h.pageSite(r, router)
		if !ok {
			return false
		}
		if err := page.Serve(w, r, site); err != nil {
			h.logger.Error("serving the page", zap.Error(err))
			http.Error(w, "the page could not be made", http.StatusInternalServerError)
		}
		return true
	}, nil
}

// pageSite describes r's host for the page: the registry it serves at its
// root, then every other configured registry that has a public name, each
// with the host names of this site that serve it. Registries known only
// by a URL (which may be an internal address) are shown by a host name of
// the site or not at all. ok is false for a Host header that is not a host
// name or IP address with an optional port: such a request keeps the
// redirect.
func (h *Handler) pageSite(r *http.Request, router *registry.Router) (site helppage.Site, ok bool) {
	host, port, ok := splitHost(r.Host)
	if !ok {
		return site, false
	}
	site.Scheme = clientScheme(r)
	site.Host = host + port
	site.ClientCertificate = r.TLS != nil && len(r.TLS.VerifiedChains) > 0
	// A private site: every client logs in with a proxy account first.
	site.LoginRequired = len(h.Users) > 0

	own, _ := router.ForHost(r.Host)
	byName := map[string]*helppage.Registry{}
	var order []string
	add := func(up registry.Upstream) *helppage.Registry {
		if reg, ok := byName[up.Name]; ok {
			return reg
		}
		reg := &helppage.Registry{}
		if url, ok := registry.PublicURL(up.Name); ok {
			reg.Name, reg.PublicURL = up.Name, url
		}
		byName[up.Name] = reg
		order = append(order, up.Name)
		return reg
	}
	add(own).Hosts = []string{site.Host}

	// The site's other host names, by registry: the older names of the
	// host table only for a registry that has no other.
	served := hostsServed(r, h)
	older := map[string][]string{}
	for _, hr := range router.HostRoutes() {
		if hr.Host == host || !served(hr.Host) {
			continue
		}
		if _, named := registry.PublicURL(hr.Upstream.Name); !named && hr.Upstream.Name != own.Name {
			// A registry known by its URL: shown by this host name,
			// never by its name.
			reg := &helppage.Registry{Hosts: []string{hr.Host + port}}
			byName["host "+hr.Host] = reg
			order = append(order, "host "+hr.Host)
			continue
		}
		if hr.Older {
			older[hr.Upstream.Name] = append(older[hr.Upstream.Name], hr.Host+port)
			continue
		}
		reg := add(hr.Upstream)
		reg.Hosts = append(reg.Hosts, hr.Host+port)
	}
	for _, up := range router.Upstreams() {
		if _, named := registry.PublicURL(up.Name); named {
			reg := add(up)
			if len(reg.Hosts) == 0 {
				reg.Hosts = older[up.Name]
			}
		}
	}
	for _, name := range order {
		site.Registries = append(site.Registries, *byName[name])
	}
	return site, true
}

// splitHost splits a Host header into a lower-case host name or IP
// address and its port suffix (":8443", or empty); ok is false for
// anything else.
func splitHost(hostport string) (host, port string, ok bool) {
	host = hostport
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		host, port = h, ":"+p
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if ip := net.ParseIP(strings.Trim(host, "[]")); ip != nil {
		if ip.To4() == nil {
			host = "[" + ip.String() + "]"
		}
		return host, port, true
	}
	if registry.CheckRouteHost(host) != nil {
		return "", "", false
	}
	return host, port, true
}

// hostsServed returns a test of whether the Caddy server that serves r
// sends requests for a host name to h: whether some chain of routes and
// subroutes whose host matchers match the name leads to h. Only host
// matchers are looked at (a site's addresses). A request outside a Caddy
// server serves no other host.
func hostsServed(r *http.Request, h *Handler) func(host string) bool {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return func(string) bool { return false }
	}
	return func(host string) bool {
		probe := r.WithContext(r.Context())
		probe.Host = host
		return routesReach(srv.Routes, probe, h)
	}
}

func routesReach(routes caddyhttp.RouteList, probe *http.Request, h *Handler) bool {
	for _, route := range routes {
		if !hostsMatch(route.MatcherSets, probe) {
			continue
		}
		for _, handler := range route.Handlers {
			switch handler := handler.(type) {
			case *Handler:
				if handler == h {
					return true
				}
			case *caddyhttp.Subroute:
				if routesReach(handler.Routes, probe, h) {
					return true
				}
			}
		}
	}
	return false
}

// hostsMatch reports whether the host matchers of some matcher set match
// probe (a route without matchers matches every request).
func hostsMatch(sets caddyhttp.MatcherSets, probe *http.Request) bool {
	if len(sets) == 0 {
		return true
	}
	for _, set := range sets {
		matched := true
		for _, m := range set {
			var hosts caddyhttp.MatchHost
			switch m := m.(type) {
			case caddyhttp.MatchHost:
				hosts = m
			case *caddyhttp.MatchHost:
				hosts = *m
			default:
				continue
			}
			if !hosts.Match(probe) {
				matched = false
				break
			}
		}
		if matched {
			return true
		}
	}
	return false
}

// parsePage parses "page off" or "page <template file>"; the current
// token is "page", given says whether it was already.
func parsePage(d *caddyfile.Dispenser, given bool) (*PageConfig, error) {
	arg, err := singleArg(d, given)
	if err != nil {
		return nil, err
	}
	switch arg {
	case "off":
		return &PageConfig{Disabled: true}, nil
	case "":
		return nil, d.Errf("page: the template file name must not be empty")
	}
	return &PageConfig{Template: arg}, nil
}
