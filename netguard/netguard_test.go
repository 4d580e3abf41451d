package netguard

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

func TestInternal(t *testing.T) {
	for _, c := range []struct {
		addr     string
		internal bool
	}{
		{"127.0.0.1", true},
		{"127.255.0.9", true},
		{"::1", true},
		{"10.1.2.3", true},
		{"172.16.0.1", true},
		{"172.31.255.255", true},
		{"192.168.1.1", true},
		{"169.254.169.254", true}, // cloud metadata
		{"fe80::1", true},
		{"fc00::1", true},
		{"fd12:3456::1", true},
		{"0.0.0.0", true},
		{"0.1.2.3", true},
		{"::", true},
		{"224.0.0.1", true},
		{"ff02::1", true},
		{"100.64.0.1", true},
		{"100.127.255.254", true},
		{"255.255.255.255", true},
		{"::ffff:127.0.0.1", true},
		{"::ffff:10.0.0.1", true},
		{"::ffff:169.254.169.254", true},
		{"::127.0.0.1", true},       // IPv4-compatible
		{"64:ff9b::a00:1", true},    // NAT64 of 10.0.0.1
		{"2002:a00:1::1", true},     // 6to4 of 10.0.0.1
		{"2002:7f00:1::", true},     // 6to4 of 127.0.0.1
		{"fec0::1", true},           // site-local
		{"fe80::1%eth0", true},      // with a zone
		{"8.8.8.8", false},          // public
		{"1.1.1.1", false},          //
		{"100.63.255.255", false},   // just below CGNAT
		{"100.128.0.0", false},      // just above CGNAT
		{"172.32.0.1", false},       // just above 172.16/12
		{"2606:4700::1111", false},  // public IPv6
		{"::ffff:8.8.8.8", false},   // mapped public
		{"64:ff9b::808:808", false}, // NAT64 of 8.8.8.8
		{"2002:808:808::1", false},  // 6to4 of 8.8.8.8
		{"2a00:1450:4001:80b::200e", false},
	} {
		a, err := netip.ParseAddr(c.addr)
		if err != nil {
			t.Fatalf("%s: %v", c.addr, err)
		}
		if got := Internal(a); got != c.internal {
			t.Errorf("Internal(%s) = %v, want %v", c.addr, got, c.internal)
		}
	}
	if !Internal(netip.Addr{}) {
		t.Error("the zero Addr is not internal")
	}
}

func TestHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"https://Registry.Example":      "registry.example:443",
		"http://registry.example":       "registry.example:80",
		"https://registry.example:5000": "registry.example:5000",
		"http://[::1]:8080/v2/":         "[::1]:8080",
		"https://[fd00::1]":             "[fd00::1]:443",
		"http://127.0.0.1:1/x?y":        "127.0.0.1:1",
	} {
		u, err := url.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := HostPort(u); got != want {
			t.Errorf("HostPort(%s) = %q, want %q", in, got, want)
		}
	}
}

// fakeResolver answers every name with its addresses.
type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// TestTransportRefusesInternalTargets: with a policy for a public
// upstream, a request to another host on an internal address (literal or
// by name) is refused before anything is sent; the upstream's own host,
// requests without a policy, and a policy that allows internal addresses
// go through.
func TestTransportRefusesInternalTargets(t *testing.T) {
	var hits int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits++ }))
	defer srv.Close()
	su, _ := url.Parse(srv.URL)
	port := su.Port()
	tr := &Transport{Base: http.DefaultTransport, Resolver: fakeResolver{
		"internal.test": {netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("127.0.0.1")},
		"home.test":     {netip.MustParseAddr("127.0.0.1")},
	}}
	client := &http.Client{Transport: tr}
	public := Policy{Home: "home.test:" + port}
	get := func(ctx context.Context, u string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	for _, u := range []string{
		srv.URL,                        // a loopback literal
		"http://internal.test:" + port, // a name with one internal address
		"http://[::ffff:127.0.0.1]:" + port,
	} {
		err := get(WithPolicy(context.Background(), public), u)
		var re *RefusedError
		if !errors.As(err, &re) {
			t.Errorf("%s: err = %v, want a RefusedError", u, err)
		}
	}
	if hits != 0 {
		t.Fatalf("the refused requests reached the server %d times", hits)
	}
	for name, ctx := range map[string]context.Context{
		"no policy":      context.Background(),
		"allow internal": WithPolicy(context.Background(), Policy{Home: "elsewhere:1", AllowInternal: true}),
		"home":           WithPolicy(context.Background(), Policy{Home: "127.0.0.1:" + port}),
	} {
		if err := get(ctx, srv.URL); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if hits != 3 {
		t.Errorf("%d requests reached the server, want 3", hits)
	}
}

// TestDialRefusesInternalAddress: a name that passed the first check but
// whose connection reached an internal address (DNS rebinding) is refused
// at the dial; a dial to another address than the request's host (a
// forward proxy) is left alone.
func TestDialRefusesInternalAddress(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	dial := Dial((&net.Dialer{}).DialContext)
	ctx := WithPolicy(context.Background(), Policy{Home: "registry.test:443"})

	conn, err := dial(context.WithValue(ctx, targetKey{}, addr), "tcp", addr)
	var re *RefusedError
	if !errors.As(err, &re) || conn != nil {
		t.Errorf("dial to the request's internal host: %v, %v; want a RefusedError", conn, err)
	}
	for name, ctx := range map[string]context.Context{
		"forward proxy": context.WithValue(ctx, targetKey{}, "cdn.test:443"),
		"no policy":     context.WithValue(context.Background(), targetKey{}, addr),
		"home":          context.WithValue(WithPolicy(context.Background(), Policy{Home: addr}), targetKey{}, addr),
	} {
		conn, err := dial(ctx, "tcp", addr)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		conn.Close()
	}
}

// TestDialThroughTransport: the dial check sees the target that Transport
// put in the context, with a resolver that says "public" and a dialer that
// lands on loopback.
func TestDialThroughTransport(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	su, _ := url.Parse(srv.URL)
	base := http.DefaultTransport.(*http.Transport).Clone()
	inner := (&net.Dialer{}).DialContext
	// rebound.test resolves to a public address for the first check and
	// to the test server when dialled.
	base.DialContext = Dial(func(ctx context.Context, network, addr string) (net.Conn, error) {
		return inner(ctx, network, srv.Listener.Addr().String())
	})
	tr := &Transport{Base: base, Resolver: fakeResolver{"rebound.test": {netip.MustParseAddr("8.8.8.8")}}}
	req, _ := http.NewRequestWithContext(WithPolicy(context.Background(), Policy{Home: "registry.test:443"}),
		http.MethodGet, "http://rebound.test:"+su.Port()+"/", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	var re *RefusedError
	if !errors.As(err, &re) {
		if resp != nil {
			resp.Body.Close()
		}
		t.Fatalf("err = %v, want a RefusedError", err)
	}
}

func FuzzInternal(f *testing.F) {
	f.Add([]byte{127, 0, 0, 1})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1})
	f.Add([]byte{0x20, 0x02, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return
		}
		got := Internal(a)
		// An IPv4 address and its IPv4-mapped IPv6 form are the same host.
		if a.Is4() && Internal(netip.AddrFrom16(a.As16())) != got {
			t.Errorf("%s and its mapped form disagree", a)
		}
		if a.IsLoopback() || a.IsPrivate() || a.IsUnspecified() || a.IsLinkLocalUnicast() {
			if !got {
				t.Errorf("%s is not internal", a)
			}
		}
	})
}

func FuzzHostPort(f *testing.F) {
	for _, s := range []string{"https://a.example", "http://[::1]:80/x", "https://A:1", "http://h:", "//x", "https://[fe80::1%25eth0]:5000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil || strings.ContainsAny(u.Hostname(), "[]") {
			return // no host that can be dialled
		}
		hp := HostPort(u)
		host, _, err := net.SplitHostPort(hp)
		if err != nil {
			t.Fatalf("HostPort(%q) = %q: %v", s, hp, err)
		}
		if want := strings.ToLower(u.Hostname()); host != want {
			t.Errorf("HostPort(%q) host %q, want %q", s, host, want)
		}
	})
}
