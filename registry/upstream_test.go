package registry

import (
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestParseUpstream(t *testing.T) {
	overrides := map[string]string{
		"docker.io": "http://127.0.0.1:5000",
		"quay.io":   "https://quay-mirror.internal/",
	}
	tests := []struct {
		in        string
		overrides map[string]string
		name, url string // want; name "" means an error
	}{
		// Well-known names, any case.
		{"docker.io", nil, "docker.io", "https://registry-1.docker.io"},
		{"Docker.IO", nil, "docker.io", "https://registry-1.docker.io"},
		{"quay.io", nil, "quay.io", "https://quay.io"},
		{"gcr.io", nil, "gcr.io", "https://gcr.io"},
		{"k8s.gcr.io", nil, "k8s.gcr.io", "https://k8s.gcr.io"},
		{"registry.k8s.io", nil, "registry.k8s.io", "https://registry.k8s.io"},
		{"ghcr.io", nil, "ghcr.io", "https://ghcr.io"},
		{"docker.cloudsmith.io", nil, "docker.cloudsmith.io", "https://docker.cloudsmith.io"},
		{"public.ecr.aws", nil, "public.ecr.aws", "https://public.ecr.aws"},
		{"nvcr.io", nil, "nvcr.io", "https://nvcr.io"},
		{"mcr.microsoft.com", nil, "mcr.microsoft.com", "https://mcr.microsoft.com"},

		// Aliases of Docker Hub.
		{"registry-1.docker.io", nil, "docker.io", "https://registry-1.docker.io"},
		{"index.docker.io", nil, "docker.io", "https://registry-1.docker.io"},
		{"registry.hub.docker.com", nil, "docker.io", "https://registry-1.docker.io"},
		{"Index.Docker.IO", nil, "docker.io", "https://registry-1.docker.io"},

		// Overrides keep the name (and so Docker Hub's rules).
		{"docker.io", overrides, "docker.io", "http://127.0.0.1:5000"},
		{"index.docker.io", overrides, "docker.io", "http://127.0.0.1:5000"},
		{"quay.io", overrides, "quay.io", "https://quay-mirror.internal"},
		{"ghcr.io", overrides, "ghcr.io", "https://ghcr.io"},
		{"docker.io", map[string]string{"docker.io": "ftp://x"}, "", ""},
		{"docker.io", map[string]string{"docker.io": "https://x/path"}, "", ""},

		// URLs.
		{"https://registry.example.com", nil, "registry.example.com", "https://registry.example.com"},
		{"https://registry.example.com/", nil, "registry.example.com", "https://registry.example.com"},
		{"http://localhost:5000", nil, "localhost:5000", "http://localhost:5000"},
		{"https://Registry.Example.COM:8443", nil, "registry.example.com:8443", "https://registry.example.com:8443"},
		{"HTTPS://registry.example.com", nil, "registry.example.com", "https://registry.example.com"},
		{"http://127.0.0.1:5000", nil, "127.0.0.1:5000", "http://127.0.0.1:5000"},
		{"http://[::1]:5000", nil, "[::1]:5000", "http://[::1]:5000"},

		// Refused.
		{"", nil, "", ""},
		{"registry.example.com", nil, "", ""},
		{"localhost:5000", nil, "", ""},
		{"https://registry.example.com/v2/", nil, "", ""},
		{"https://registry.example.com/path", nil, "", ""},
		{"https://registry.example.com?x=1", nil, "", ""},
		{"https://registry.example.com/#frag", nil, "", ""},
		{"https://user@registry.example.com", nil, "", ""},
		{"https://user:secret@registry.example.com", nil, "", ""},
		{"ftp://registry.example.com", nil, "", ""},
		{"unix:///run/registry.sock", nil, "", ""},
		{"file:///etc/passwd", nil, "", ""},
		{"https://", nil, "", ""},
		{"https:///v2/", nil, "", ""},
		{"https://:443", nil, "", ""},
		{"https://registry.example.com:port", nil, "", ""},
		{"https://registry.example.com:-1", nil, "", ""},
		{"https://reg istry.example.com", nil, "", ""},
		{"https://registry.example.com\n", nil, "", ""},
		{"://registry.example.com", nil, "", ""},
	}
	for _, tt := range tests {
		u, err := ParseUpstream(tt.in, tt.overrides)
		if tt.name == "" {
			if err == nil {
				t.Errorf("ParseUpstream(%q) = %s %s, want an error", tt.in, u.Name, u.URL)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseUpstream(%q): %v", tt.in, err)
			continue
		}
		if u.Name != tt.name || u.String() != tt.url {
			t.Errorf("ParseUpstream(%q) = %s %s, want %s %s", tt.in, u.Name, u.String(), tt.name, tt.url)
		}
		if u.URL.Path != "" || u.URL.RawQuery != "" || u.URL.User != nil {
			t.Errorf("ParseUpstream(%q) URL %#v has more than scheme and host", tt.in, u.URL)
		}
	}
}

func TestParseUpstreamErrorsAreHelpful(t *testing.T) {
	_, err := ParseUpstream("example.com", nil)
	if err == nil || !strings.Contains(err.Error(), "docker.io") || !strings.Contains(err.Error(), "https://") {
		t.Errorf("unknown name: %v; want the well-known names and a URL example", err)
	}
	_, err = ParseUpstream("https://u:p@example.com", nil)
	if err == nil || !strings.Contains(err.Error(), "credentials") {
		t.Errorf("user info: %v; want a pointer to the credentials subdirective", err)
	}
	_, err = ParseUpstream("docker.io", map[string]string{"docker.io": "https://x/y"})
	if err == nil || !strings.Contains(err.Error(), "docker.io") {
		t.Errorf("bad override: %v; want the overridden name", err)
	}
}

func TestWellKnownNames(t *testing.T) {
	names := WellKnownNames()
	if !slices.IsSorted(names) {
		t.Errorf("WellKnownNames() not sorted: %v", names)
	}
	for _, want := range []string{"docker.io", "ghcr.io", "quay.io", "gcr.io", "k8s.gcr.io", "registry.k8s.io", "public.ecr.aws", "docker.cloudsmith.io"} {
		if !slices.Contains(names, want) {
			t.Errorf("WellKnownNames() lacks %s", want)
		}
	}
	for _, n := range names {
		u, err := ParseUpstream(n, nil)
		if err != nil || u.Name != n || u.URL.Scheme != "https" {
			t.Errorf("ParseUpstream(%q) = %+v, %v", n, u, err)
		}
	}
}

func TestIsDockerHub(t *testing.T) {
	for in, want := range map[string]bool{
		"docker.io": true, "index.docker.io": true, "registry-1.docker.io": true,
		"ghcr.io": false, "https://registry.example.com": false,
	} {
		u, err := ParseUpstream(in, nil)
		if err != nil {
			t.Fatal(err)
		}
		if u.IsDockerHub() != want {
			t.Errorf("%s: IsDockerHub() = %v", in, !want)
		}
	}
	u, err := ParseUpstream("docker.io", map[string]string{"docker.io": "http://127.0.0.1:1"})
	if err != nil || !u.IsDockerHub() {
		t.Errorf("overridden docker.io: %+v, %v; want Docker Hub rules kept", u, err)
	}
}

func FuzzParseUpstream(f *testing.F) {
	for _, s := range []string{
		"docker.io", "index.docker.io", "ghcr.io", "https://registry.example.com",
		"http://localhost:5000", "https://[::1]:443/", "https://u@h", "ftp://h",
		"https://h/p?q#f", "https://:1", "HTTP://H:0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUpstream(s, nil)
		if err != nil {
			return
		}
		if u.Name == "" || u.URL == nil {
			t.Fatalf("ParseUpstream(%q) = %+v", s, u)
		}
		if u.URL.Scheme != "http" && u.URL.Scheme != "https" {
			t.Fatalf("ParseUpstream(%q): scheme %q", s, u.URL.Scheme)
		}
		if u.URL.Hostname() == "" || u.URL.Path != "" || u.URL.RawQuery != "" || u.URL.Fragment != "" || u.URL.User != nil || u.URL.Opaque != "" {
			t.Fatalf("ParseUpstream(%q): URL %#v has more than scheme and host", s, u.URL)
		}
		if u.URL.Host != strings.ToLower(u.URL.Host) {
			t.Fatalf("ParseUpstream(%q): host %q not lower case", s, u.URL.Host)
		}
		// The base URL is itself a valid upstream for the same URL,
		// and what the client joins /v2/ to stays on that host.
		again, err := ParseUpstream(u.String(), nil)
		if err != nil {
			t.Fatalf("ParseUpstream(%q) = %s, which does not parse again: %v", s, u, err)
		}
		if again.String() != u.String() {
			t.Fatalf("ParseUpstream(%q) = %s, again %s", s, u, again)
		}
		v2, err := url.Parse(u.URL.JoinPath("/v2/").String())
		if err != nil || v2.Host != u.URL.Host || v2.Path != "/v2/" {
			t.Fatalf("%s joined with /v2/ = %v, %v", u, v2, err)
		}
	})
}

// TestParseUpstreamPortRange: url.Parse only checks that a port is digits,
// so ports that no server can listen on, and an empty port after the colon,
// pass ParseUpstream today and fail only when the proxy dials.
func TestParseUpstreamPortRange(t *testing.T) {
	for _, s := range []string{"https://registry.example.com:0", "https://registry.example.com:65536", "https://registry.example.com:99999", "https://registry.example.com:"} {
		if u, err := ParseUpstream(s, nil); err == nil {
			t.Errorf("ParseUpstream(%q) = %s (name %q), want a bad port error", s, u, u.Name)
		}
	}
	for _, s := range []string{"https://registry.example.com:1", "https://registry.example.com:65535"} {
		if _, err := ParseUpstream(s, nil); err != nil {
			t.Errorf("ParseUpstream(%q): %v", s, err)
		}
	}
}
