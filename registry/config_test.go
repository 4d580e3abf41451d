package registry

import (
	"strings"
	"testing"
)

func TestConfigChecks(t *testing.T) {
	for _, d := range []string{"example.com", "Example.COM", "a-b.c0", "x"} {
		if err := CheckDomain(d); err != nil {
			t.Errorf("CheckDomain(%q) = %v", d, err)
		}
	}
	for _, d := range []string{"", "example.com.", "example..com", "-a.com", "a_b.com", "10.0.0.1", "example.com:443", "*.example.com", strings.Repeat("a", 64) + ".com"} {
		if err := CheckDomain(d); err == nil {
			t.Errorf("CheckDomain(%q) accepted", d)
		}
	}
	for _, h := range []string{"hub.example.com", "10.0.0.1", "::1", "localhost"} {
		if err := CheckRouteHost(h); err != nil {
			t.Errorf("CheckRouteHost(%q) = %v", h, err)
		}
	}
	for _, h := range []string{"", "hub.example.com:5000", "[::1]", "https://hub.example.com"} {
		if err := CheckRouteHost(h); err == nil {
			t.Errorf("CheckRouteHost(%q) accepted", h)
		}
	}
	if name, err := ParseOverride("Index.Docker.io", "http://127.0.0.1:5000"); err != nil || name != DockerHub {
		t.Errorf("ParseOverride(alias) = %q, %v", name, err)
	}
	for _, c := range [][2]string{{"myregistry", "http://a"}, {"https://ghcr.io", "http://a"}, {"ghcr.io", "ghcr.io"}, {"ghcr.io", "http://a/v2/"}} {
		if _, err := ParseOverride(c[0], c[1]); err == nil {
			t.Errorf("ParseOverride(%q, %q) accepted", c[0], c[1])
		}
	}
}
