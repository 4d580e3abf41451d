package dockerproxy

import (
	"fmt"
	"net"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-dockerproxy/dockerproxy/netguard"
)

// The upstream transport: Caddy's reverse_proxy transport, whose dials
// netguard refuses for internal addresses.

// loadTransport loads the configured reverse_proxy transport, or Caddy's
// HTTP transport with its defaults (keep-alive, HTTP/2).
func (h *Handler) loadTransport(ctx caddy.Context) (http.RoundTripper, error) {
	if h.TransportRaw != nil {
		mod, err := ctx.LoadModule(h, "TransportRaw")
		if err != nil {
			return nil, fmt.Errorf("loading transport: %v", err)
		}
		rt, ok := mod.(http.RoundTripper)
		if !ok {
			return nil, fmt.Errorf("transport module %T is not an http.RoundTripper", mod)
		}
		guardDial(rt)
		return rt, nil
	}
	ht := new(reverseproxy.HTTPTransport)
	if err := ht.Provision(ctx); err != nil {
		return nil, fmt.Errorf("provisioning transport: %v", err)
	}
	guardDial(ht)
	return ht, nil
}

// guardDial makes the transport's connections subject to the netguard
// policy of the request they are made for, so that a redirect target or
// realm whose name resolves to an internal address only when dialled is
// refused too. Other transports get the check before each request only
// (registry.Client and tokenauth.Fetcher do that whatever the transport).
func guardDial(rt http.RoundTripper) {
	ht, ok := rt.(*reverseproxy.HTTPTransport)
	if !ok || ht.Transport == nil {
		return
	}
	dial := ht.Transport.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	ht.Transport.DialContext = netguard.Dial(dial)
}
