package registry

import "testing"

func TestOlderHostPrefixesAreInTheHostTable(t *testing.T) {
	for _, prefix := range olderHostPrefixes {
		if _, ok := hostTable[prefix]; !ok {
			t.Errorf("older host prefix %q is not in the host table", prefix)
		}
	}
}

func TestHostRoutesMarkOlderNamesAndKeepOverrides(t *testing.T) {
	rt, err := NewRouter(RouterConfig{
		Domain:    "example.com",
		Routes:    map[string]string{"hub.example.com": "ghcr.io", "mirror.example.com": "docker.io"},
		Overrides: map[string]string{"docker.io": "http://10.0.0.5:5000"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]HostRoute{}
	for _, hr := range rt.HostRoutes() {
		got[hr.Host] = hr
	}
	for host, want := range map[string]struct {
		name  string
		older bool
	}{
		"docker.example.com":                     {"docker.io", false},
		"docker-staging.example.com":             {"docker.io", false},
		"ghcr.example.com":                       {"ghcr.io", false},
		"registry.example.com":                   {"docker.io", true},
		"ghcr.registry.docker.example.com":       {"ghcr.io", true},
		"k8s.registry.docker.example.com":        {"registry.k8s.io", true},
		"mirror.example.com":                     {"docker.io", false},
		"hub.example.com":                        {"ghcr.io", false}, // routed elsewhere: not the table's older name
		"cloudsmith.registry.docker.example.com": {"docker.cloudsmith.io", true},
	} {
		hr, ok := got[host]
		if !ok {
			t.Errorf("%s not routed", host)
			continue
		}
		if hr.Upstream.Name != want.name || hr.Older != want.older {
			t.Errorf("%s = %s older=%v, want %s older=%v", host, hr.Upstream.Name, hr.Older, want.name, want.older)
		}
	}
	if u, ok := PublicURL("docker.io"); !ok || u != "https://registry-1.docker.io" {
		t.Errorf("PublicURL(docker.io) = %q %v, want Docker Hub's public address even when overridden", u, ok)
	}
	if _, ok := PublicURL("10.0.0.5:5000"); ok {
		t.Error("PublicURL knows a URL upstream's name")
	}
}
