package tokenauth

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/caddy-dockerproxy/dockerproxy/netguard"
)

// sameOrigin reports whether a and b are the same origin: scheme, host and
// port, with the scheme's default port made explicit. Credentials meant
// for a realm go to its origin only: net/http's own rule compares host
// names, so another port on the same host (another service), an https to
// http downgrade and a subdomain would all get them.
func sameOrigin(a, b *url.URL) bool {
	return a.Scheme != "" && a.Scheme == b.Scheme && a.Host != "" && b.Host != "" &&
		netguard.HostPort(a) == netguard.HostPort(b)
}

// maxRealmRedirects bounds the redirects of one token request, as
// net/http's default does.
const maxRealmRedirects = 10

// realmClient returns the client for token requests: base, with its
// transport guarded by the request's netguard policy (a realm is a host
// the upstream named), and redirects that keep Authorization only on the
// realm's exact origin.
func realmClient(base *http.Client) *http.Client {
	c := *netguard.WrapClient(base)
	next := c.CheckRedirect
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if !sameOrigin(req.URL, via[0].URL) {
			req.Header.Del("Authorization")
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= maxRealmRedirects {
			return errors.New("token service redirected too many times")
		}
		return nil
	}
	return &c
}
