package registry

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

const (
	hubURL        = "https://registry-1.docker.io"
	quayURL       = "https://quay.io"
	gcrURL        = "https://gcr.io"
	k8sGcrURL     = "https://k8s.gcr.io"
	k8sURL        = "https://registry.k8s.io"
	ghcrURL       = "https://ghcr.io"
	cloudsmithURL = "https://docker.cloudsmith.io"
	ecrURL        = "https://public.ecr.aws"
)

// seedTable is the host table of cloudflare-docker-proxy and go-docker-proxy
// on example.com, written out independently of routes.go.
var seedTable = map[string]string{
	"docker.example.com":                     hubURL,
	"docker-staging.example.com":             hubURL,
	"quay.example.com":                       quayURL,
	"gcr.example.com":                        gcrURL,
	"k8s-gcr.example.com":                    k8sGcrURL,
	"k8s.example.com":                        k8sURL,
	"ghcr.example.com":                       ghcrURL,
	"cloudsmith.example.com":                 cloudsmithURL,
	"ecr.example.com":                        ecrURL,
	"hub.example.com":                        hubURL,
	"registry.example.com":                   hubURL,
	"registry.docker.example.com":            hubURL,
	"quay.registry.docker.example.com":       quayURL,
	"gcr.registry.docker.example.com":        gcrURL,
	"k8s-gcr.registry.docker.example.com":    k8sGcrURL,
	"k8s.registry.docker.example.com":        k8sURL,
	"ghcr.registry.docker.example.com":       ghcrURL,
	"cloudsmith.registry.docker.example.com": cloudsmithURL,
	"ecr.registry.docker.example.com":        ecrURL,
}

func mustRouter(t *testing.T, cfg RouterConfig) *Router {
	t.Helper()
	rt, err := NewRouter(cfg)
	if err != nil {
		t.Fatalf("NewRouter(%+v): %v", cfg, err)
	}
	return rt
}

func TestRouterDomainTable(t *testing.T) {
	for _, domain := range []string{"example.com", "Example.COM", ".example.com.", "example.com."} {
		rt := mustRouter(t, RouterConfig{Domain: domain})
		for host, want := range seedTable {
			u, known := rt.ForHost(host)
			if !known || u.URL == nil || u.String() != want {
				t.Errorf("domain %q: ForHost(%q) = %v, %v; want %s", domain, host, u.URL, known, want)
			}
		}
		if got := rt.Table(); !maps.Equal(got, seedTable) {
			t.Errorf("domain %q: Table() = %v, want %v", domain, got, seedTable)
		}
		for _, host := range []string{"example.com", "www.example.com", "docker.example.org", "docker.example.com.evil.net", "evil.net", "", "foo.docker.example.com"} {
			if u, known := rt.ForHost(host); known || u.URL != nil {
				t.Errorf("domain %q: ForHost(%q) = %v, %v; want unknown", domain, host, u.URL, known)
			}
		}
	}
}

func TestRouterDockerHubRules(t *testing.T) {
	rt := mustRouter(t, RouterConfig{Domain: "example.com"})
	for host, want := range seedTable {
		u, _ := rt.ForHost(host)
		if u.IsDockerHub() != (want == hubURL) {
			t.Errorf("ForHost(%q).IsDockerHub() = %v", host, u.IsDockerHub())
		}
	}
}

func TestRouterForHostForms(t *testing.T) {
	rt := mustRouter(t, RouterConfig{
		Domain: "example.com",
		Routes: map[string]string{
			"mirror.test":      "ghcr.io",
			"[::1]":            "quay.io",
			"127.0.0.1":        "gcr.io",
			"Upper.Case.Test.": "public.ecr.aws",
		},
	})
	tests := map[string]string{
		"docker.example.com":                   hubURL,
		"docker.example.com:443":               hubURL,
		"docker.example.com:8443":              hubURL,
		"DOCKER.Example.Com":                   hubURL,
		"docker.example.com.":                  hubURL,
		"docker.example.com.:443":              hubURL,
		"Docker.Example.Com.:8080":             hubURL,
		"mirror.test":                          ghcrURL,
		"mirror.test:5000":                     ghcrURL,
		"[::1]":                                quayURL,
		"[::1]:443":                            quayURL,
		"::1":                                  quayURL,
		"127.0.0.1":                            gcrURL,
		"127.0.0.1:8080":                       gcrURL,
		"upper.case.test":                      ecrURL,
		"UPPER.CASE.TEST:1":                    ecrURL,
		"quay.registry.docker.example.com:443": quayURL,
	}
	for host, want := range tests {
		u, known := rt.ForHost(host)
		if !known || u.URL == nil || u.String() != want {
			t.Errorf("ForHost(%q) = %v, %v; want %s", host, u.URL, known, want)
		}
	}
	for _, host := range []string{"[::2]:443", "127.0.0.2", "mirror.test.example", "example.com:443"} {
		if u, known := rt.ForHost(host); known {
			t.Errorf("ForHost(%q) = %v, want unknown", host, u.URL)
		}
	}
}

func TestRouterRoutesOverrideDomain(t *testing.T) {
	rt := mustRouter(t, RouterConfig{
		Domain: "example.com",
		Routes: map[string]string{
			"docker.example.com": "https://hub-mirror.internal",
			"GHCR.example.com.":  "quay.io",
			"extra.example.net":  "http://localhost:5000",
		},
	})
	want := maps.Clone(seedTable)
	want["docker.example.com"] = "https://hub-mirror.internal"
	want["ghcr.example.com"] = quayURL
	want["extra.example.net"] = "http://localhost:5000"
	if got := rt.Table(); !maps.Equal(got, want) {
		t.Errorf("Table() = %v, want %v", got, want)
	}
	for host, w := range want {
		if u, known := rt.ForHost(host); !known || u.String() != w {
			t.Errorf("ForHost(%q) = %v, %v; want %s", host, u.URL, known, w)
		}
	}
	// docker-staging still goes to Docker Hub.
	if u, _ := rt.ForHost("docker-staging.example.com"); !u.IsDockerHub() {
		t.Errorf("docker-staging: %v", u.URL)
	}
}

func TestRouterDefaultAndFallback(t *testing.T) {
	rt := mustRouter(t, RouterConfig{Default: "docker.io", Routes: map[string]string{"ghcr.test": "ghcr.io"}})
	if u, known := rt.ForHost("anything.test"); !known || !u.IsDockerHub() {
		t.Errorf("default: ForHost = %v, %v", u.URL, known)
	}
	if u, known := rt.ForHost("ghcr.test:443"); !known || u.String() != ghcrURL {
		t.Errorf("route beats default: ForHost = %v, %v", u.URL, known)
	}
	if got, want := rt.Table(), map[string]string{"ghcr.test": ghcrURL, "*": hubURL}; !maps.Equal(got, want) {
		t.Errorf("Table() = %v, want %v", got, want)
	}

	fb := mustRouter(t, RouterConfig{Fallback: "http://127.0.0.1:9999", Routes: map[string]string{"quay.test": "quay.io"}})
	if u, known := fb.ForHost("unknown.test"); known || u.URL == nil || u.String() != "http://127.0.0.1:9999" {
		t.Errorf("fallback: ForHost = %v, %v; want the fallback, known=false", u.URL, known)
	}
	if u, known := fb.ForHost("quay.test"); !known || u.String() != quayURL {
		t.Errorf("route beats fallback: ForHost = %v, %v", u.URL, known)
	}
	if _, ok := fb.Table()["*"]; ok {
		t.Errorf("the debug fallback is listed in Table(): %v", fb.Table())
	}

	both := mustRouter(t, RouterConfig{Default: "ghcr.io", Fallback: "quay.io"})
	if u, known := both.ForHost("x"); !known || u.String() != ghcrURL {
		t.Errorf("default beats fallback: ForHost = %v, %v", u.URL, known)
	}

	only := mustRouter(t, RouterConfig{Fallback: "quay.io"})
	if u, known := only.ForHost("x"); known || u.String() != quayURL {
		t.Errorf("fallback only: ForHost = %v, %v", u.URL, known)
	}
}

func TestRouterByName(t *testing.T) {
	rt := mustRouter(t, RouterConfig{
		Default:   "docker.io",
		Routes:    map[string]string{"a.test": "ghcr.io", "b.test": "https://Registry.Example.com:5000"},
		Overrides: map[string]string{"docker.io": "http://127.0.0.1:5001"},
	})
	tests := map[string]string{
		"docker.io":                 "http://127.0.0.1:5001",
		"Docker.IO":                 "http://127.0.0.1:5001",
		"registry-1.docker.io":      "http://127.0.0.1:5001",
		"index.docker.io":           "http://127.0.0.1:5001",
		"registry.hub.docker.com":   "http://127.0.0.1:5001",
		"ghcr.io":                   ghcrURL,
		"GHCR.io":                   ghcrURL,
		"registry.example.com:5000": "https://registry.example.com:5000",
		"REGISTRY.example.com:5000": "https://registry.example.com:5000",
	}
	for name, want := range tests {
		if u, ok := rt.ByName(name); !ok || u.String() != want {
			t.Errorf("ByName(%q) = %v, %v; want %s", name, u.URL, ok, want)
		}
	}
	// Only configured upstreams: never an open proxy.
	for _, name := range []string{"quay.io", "gcr.io", "registry.example.com", "evil.test", "", "a.test"} {
		if u, ok := rt.ByName(name); ok {
			t.Errorf("ByName(%q) = %v, want not configured", name, u.URL)
		}
	}
	if got, want := rt.Names(), []string{"docker.io", "ghcr.io", "registry.example.com:5000"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
}

func TestRouterDomainNames(t *testing.T) {
	rt := mustRouter(t, RouterConfig{Domain: "example.com"})
	want := []string{"docker.cloudsmith.io", "docker.io", "gcr.io", "ghcr.io", "k8s.gcr.io", "public.ecr.aws", "quay.io", "registry.k8s.io"}
	if got := rt.Names(); !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
	for _, n := range want {
		if _, ok := rt.ByName(n); !ok {
			t.Errorf("ByName(%q) not found", n)
		}
	}
}

func TestNewRouterErrors(t *testing.T) {
	tests := []struct {
		cfg  RouterConfig
		want string // in the error
	}{
		{RouterConfig{}, "no upstream"},
		{RouterConfig{Routes: map[string]string{}}, "no upstream"},
		{RouterConfig{Default: "nope"}, "upstream"},
		{RouterConfig{Default: "https://x/y"}, "upstream"},
		{RouterConfig{Fallback: "ftp://x"}, "fallback"},
		{RouterConfig{Routes: map[string]string{"bad.test": "https://u:p@x"}}, "route bad.test"},
		{RouterConfig{Domain: "."}, "domain"},
		{RouterConfig{Domain: "..."}, "domain"},
		{RouterConfig{Domain: "example.com/x"}, "domain"},
		{RouterConfig{Domain: "example.com:443"}, "domain"},
		{RouterConfig{Domain: "*.example.com"}, "domain"},
		{RouterConfig{Domain: "exa mple.com"}, "domain"},
		{RouterConfig{Domain: "example.com", Overrides: map[string]string{"quay.io": "https://q/x"}}, "quay.io"},
	}
	for _, tt := range tests {
		rt, err := NewRouter(tt.cfg)
		if err == nil {
			t.Errorf("NewRouter(%+v) = %v, want an error", tt.cfg, rt)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewRouter(%+v): %v; want it to mention %q", tt.cfg, err, tt.want)
		}
	}
}

func TestRouterOverridesApplyToDomain(t *testing.T) {
	rt := mustRouter(t, RouterConfig{Domain: "example.com", Overrides: map[string]string{"docker.io": "http://127.0.0.1:5000"}})
	for _, host := range []string{"docker.example.com", "hub.example.com", "registry.example.com", "registry.docker.example.com"} {
		u, known := rt.ForHost(host)
		if !known || u.String() != "http://127.0.0.1:5000" || !u.IsDockerHub() {
			t.Errorf("ForHost(%q) = %+v, %v; want the override, Docker Hub rules", host, u, known)
		}
	}
}

func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{"docker.example.com", "Docker.Example.com.:443", "[::1]:80", "::1", "[::1]", "", ":", "a.", "a..:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		n := normalizeHost(host)
		if n != strings.ToLower(n) {
			t.Fatalf("normalizeHost(%q) = %q is not lower case", host, n)
		}
		// For a plain DNS-style host, the port, the case and one trailing
		// dot never change the route.
		if strings.ContainsAny(host, ":[]") || !isASCII(host) {
			return
		}
		variants := []string{host + ":443", strings.ToUpper(host)}
		if !strings.HasSuffix(host, ".") { // "a.." is not "a."
			variants = append(variants, host+".", strings.ToUpper(host)+".:8443")
		}
		for _, variant := range variants {
			if got := normalizeHost(variant); got != n {
				t.Fatalf("normalizeHost(%q) = %q but normalizeHost(%q) = %q", host, n, variant, got)
			}
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
