package dockerproxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-dockerproxy/dockerproxy/netguard"
)

// publicResolver answers every name with a public address, as a name that
// DNS rebinding turns to an internal one after the check would.
type publicResolver struct{}

func (publicResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("8.8.8.8")}, nil
}

// TestTransportDialIsGuarded: the Caddy HTTP transport the handler uses
// checks the address each new connection reached: a name that passed the
// check before the request (here: told public) but is dialled on loopback
// is refused, for a public upstream's redirect target; the upstream's own
// host is not.
func TestTransportDialIsGuarded(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	ht := new(reverseproxy.HTTPTransport)
	if err := ht.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	guardDial(ht)
	var hits int
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits++ }))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort("localhost", strconv.Itoa(port)), Path: "/"}
	if addrs, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip", "localhost"); err != nil || len(addrs) == 0 {
		t.Skipf("localhost does not resolve here: %v", err)
	}
	client := &http.Client{Transport: &netguard.Transport{Base: ht, Resolver: publicResolver{}}}
	get := func(p netguard.Policy) error {
		req, _ := http.NewRequestWithContext(netguard.WithPolicy(context.Background(), p), http.MethodGet, target.String(), nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	err := get(netguard.Policy{Home: "registry.example:443"})
	if !errors.As(err, new(*netguard.RefusedError)) {
		t.Errorf("a redirect target dialled on loopback: %v, want refused", err)
	}
	if hits != 0 {
		t.Fatalf("the loopback server got %d requests", hits)
	}
	if err := get(netguard.Policy{Home: netguard.HostPort(target)}); err != nil || hits != 1 {
		t.Errorf("the upstream's own host: %v, %d requests", err, hits)
	}
}
