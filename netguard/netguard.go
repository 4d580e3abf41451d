package netguard

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// Policy says where requests made on behalf of one upstream may go.
type Policy struct {
	// Home is the upstream's own host:port (HostPort of its URL).
	// Requests there are the upstream's, and never refused.
	Home string
	// AllowInternal lets requests go to internal addresses: set when
	// the upstream itself is on one.
	AllowInternal bool
}

type policyKey struct{}

// targetKey holds the host:port a request is for, so that Dial can tell a
// connection to that host from one to a forward proxy.
type targetKey struct{}

// WithPolicy returns ctx carrying p for the requests made with it.
func WithPolicy(ctx context.Context, p Policy) context.Context {
	return context.WithValue(ctx, policyKey{}, p)
}

// FromContext returns the policy ctx carries, if any.
func FromContext(ctx context.Context) (Policy, bool) {
	p, ok := ctx.Value(policyKey{}).(Policy)
	return p, ok
}

// restricts reports whether p refuses internal addresses for hostPort.
func (p Policy) restricts(hostPort string) bool {
	return !p.AllowInternal && hostPort != p.Home
}

// RefusedError is a request the policy refused. Its message names the host
// and address, for logs; clients get a message without them.
type RefusedError struct {
	Host string
	Addr netip.Addr
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("refusing to connect to %s (%s): an internal address, and the upstream is not on one", e.Host, e.Addr)
}

// HostPort is u's host and port as a connection dials it: the default port
// of the scheme made explicit, the host lower-cased, IPv6 in brackets.
func HostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		switch strings.ToLower(u.Scheme) {
		case "https":
			port = "443"
		case "http":
			port = "80"
		}
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// Prefixes that are not the public internet beyond what netip's predicates
// cover (loopback, private incl. fc00::/7, link-local, multicast,
// unspecified).
var internalPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and broadcast
	netip.MustParsePrefix("::/96"),           // IPv4-compatible (deprecated)
	netip.MustParsePrefix("fec0::/10"),       // site-local (deprecated)
	netip.MustParsePrefix("100::/64"),        // discard-only
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("192.88.99.0/24"),  // 6to4 relay anycast (deprecated)
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
}

// Prefixes of IPv6 addresses that carry an IPv4 address, which is what
// decides where a packet ends up.
var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96") // the embedded IPv4 is the last 32 bits
	sixToFour = netip.MustParsePrefix("2002::/16")    // the embedded IPv4 is bits 16-48
)

// Internal reports whether a is not a public internet address: loopback,
// private (RFC 1918, IPv6 ULA fc00::/7), link-local, multicast,
// unspecified, carrier-grade NAT (100.64.0.0/10), reserved and
// documentation ranges, and IPv4-mapped, NAT64 or 6to4 forms of these. An
// invalid address counts as internal: it is nowhere the proxy should go.
func Internal(a netip.Addr) bool {
	if !a.IsValid() {
		return true
	}
	a = a.Unmap()
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64.Contains(a):
			return Internal(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
		case sixToFour.Contains(a):
			return Internal(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}))
		}
	}
	if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return true
	}
	for _, p := range internalPrefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Resolver looks up a host's addresses; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Transport checks each request whose context carries a Policy before
// Base sends it: a host that is, or resolves to, an internal address is
// refused when the policy says so.
type Transport struct {
	Base http.RoundTripper
	// Resolver defaults to net.DefaultResolver.
	Resolver Resolver
}

// Wrap returns rt guarded by a Transport (rt itself if it already is one).
// A nil rt is http.DefaultTransport.
func Wrap(rt http.RoundTripper) http.RoundTripper {
	if _, ok := rt.(*Transport); ok {
		return rt
	}
	if rt == nil {
		rt = http.DefaultTransport
	}
	return &Transport{Base: rt}
}

// WrapClient returns a copy of c whose transport is guarded (c itself if
// it already is). A nil c is http.DefaultClient.
func WrapClient(c *http.Client) *http.Client {
	if c == nil {
		c = http.DefaultClient
	}
	if _, ok := c.Transport.(*Transport); ok {
		return c
	}
	guarded := *c
	guarded.Transport = Wrap(c.Transport)
	return &guarded
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	p, ok := FromContext(ctx)
	if !ok {
		return t.Base.RoundTrip(req)
	}
	target := HostPort(req.URL)
	if p.restricts(target) {
		if err := t.check(ctx, req.URL.Hostname()); err != nil {
			if req.Body != nil {
				_ = req.Body.Close()
			}
			return nil, err
		}
	}
	return t.Base.RoundTrip(req.WithContext(context.WithValue(ctx, targetKey{}, target)))
}

// check refuses host if it is an internal address or any of its addresses
// is. A name that does not resolve passes: the dial fails on its own, and
// Dial checks whatever it reaches.
func (t *Transport) check(ctx context.Context, host string) error {
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")); err == nil {
		if Internal(a) {
			return &RefusedError{Host: host, Addr: a.Unmap()}
		}
		return nil
	}
	var r Resolver = net.DefaultResolver
	if t.Resolver != nil {
		r = t.Resolver
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if Internal(a) {
			return &RefusedError{Host: host, Addr: a.Unmap()}
		}
	}
	return nil
}

// DialFunc is the type of http.Transport's DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Dial wraps dial so that a connection made for a request the policy
// restricts is closed, and refused, when it reached an internal address.
// Connections to anything but the request's own host (a forward proxy)
// are not checked: the proxy decides where the request goes from there,
// and Transport has checked the host as this machine resolves it.
func Dial(dial DialFunc) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return conn, err
		}
		p, ok := FromContext(ctx)
		target, _ := ctx.Value(targetKey{}).(string)
		// net/http dials the URL's host as written; HostPort lower-cased it.
		if !ok || !strings.EqualFold(target, addr) || !p.restricts(target) {
			return conn, nil
		}
		// A connection that is not IP (a unix socket, through a custom
		// transport) is not the internet either, and is left alone.
		ra := conn.RemoteAddr()
		if ra == nil {
			return conn, nil
		}
		ap, err := netip.ParseAddrPort(ra.String())
		if err != nil || !Internal(ap.Addr()) {
			return conn, nil
		}
		_ = conn.Close()
		host, _, _ := net.SplitHostPort(addr)
		return nil, &RefusedError{Host: host, Addr: ap.Addr().Unmap()}
	}
}
