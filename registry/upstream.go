package registry

import (
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// Upstream is a registry the proxy forwards to.
type Upstream struct {
	// Name is how configuration and containerd's ?ns= refer to the
	// upstream: docker.io, ghcr.io, or host[:port] of a URL.
	Name string
	// URL is the registry's base URL (scheme and host, no path).
	URL *url.URL
}

// IsDockerHub reports whether the upstream is Docker Hub, whose
// one-component repository names live under library/.
func (u Upstream) IsDockerHub() bool { return u.Name == DockerHub }

// String returns the upstream's base URL.
func (u Upstream) String() string { return u.URL.String() }

// DockerHub is the canonical name of Docker Hub.
const DockerHub = "docker.io"

// wellKnown maps registry names to their API base URLs.
var wellKnown = map[string]string{
	DockerHub:              "https://registry-1.docker.io",
	"quay.io":              "https://quay.io",
	"gcr.io":               "https://gcr.io",
	"k8s.gcr.io":           "https://k8s.gcr.io",
	"registry.k8s.io":      "https://registry.k8s.io",
	"ghcr.io":              "https://ghcr.io",
	"docker.cloudsmith.io": "https://docker.cloudsmith.io",
	"public.ecr.aws":       "https://public.ecr.aws",
	"nvcr.io":              "https://nvcr.io",
	"mcr.microsoft.com":    "https://mcr.microsoft.com",
}

// aliases are other names clients and users give the well-known registries.
var aliases = map[string]string{
	"registry-1.docker.io":    DockerHub,
	"index.docker.io":         DockerHub,
	"registry.hub.docker.com": DockerHub,
}

// WellKnownNames lists the names ParseUpstream accepts without a URL.
func WellKnownNames() []string {
	names := make([]string, 0, len(wellKnown))
	for n := range wellKnown {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ParseUpstream parses an upstream given as a well-known registry name
// (docker.io, ghcr.io, ...) or as an http(s) URL with no path, query or
// user info. overrides points well-known names at other URLs (tests, private
// mirrors); an overridden name retains its name and so its rules.
func ParseUpstream(s string, overrides map[string]string) (Upstream, error) {
	if s == "" {
		return Upstream{}, fmt.Errorf("empty upstream")
	}
	name := strings.ToLower(s)
	if canonical, ok := aliases[name]; ok {
		name = canonical
	}
	if raw, ok := overrides[name]; ok {
		u, err := parseBaseURL(raw)
		if err != nil {
			return Upstream{}, fmt.Errorf("upstream %s: %w", name, err)
		}
		return Upstream{Name: name, URL: u}, nil
	}
	if raw, ok := wellKnown[name]; ok {
		u, _ := url.Parse(raw)
		return Upstream{Name: name, URL: u}, nil
	}
	if !strings.Contains(s, "://") {
		return Upstream{}, fmt.Errorf("unknown upstream %q: give a URL (https://registry.example.com) or one of %s",
			s, strings.Join(WellKnownNames(), ", "))
	}
	u, err := parseBaseURL(s)
	if err != nil {
		return Upstream{}, err
	}
	// Docker Hub given by its API URL retains its name, and so its rules.
	if canonical, ok := aliases[u.Hostname()]; ok && u.Port() == "" {
		return Upstream{Name: canonical, URL: u}, nil
	}
	return Upstream{Name: u.Host, URL: u}, nil
}

func parseBaseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("invalid upstream URL %q: %v", s, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("invalid upstream URL %q: scheme must be http or https", s)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("invalid upstream URL %q: no host", s)
	case u.User != nil:
		return nil, fmt.Errorf("invalid upstream URL %q: put credentials in the credentials subdirective, not the URL", s)
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "":
		return nil, fmt.Errorf("invalid upstream URL %q: give only scheme and host (the registry API lives at /v2/)", s)
	}
	if strings.HasSuffix(u.Host, ":") {
		return nil, fmt.Errorf("invalid upstream URL %q: empty port", s)
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("invalid upstream URL %q: port must be 1-65535", s)
		}
	}
	return &url.URL{Scheme: u.Scheme, Host: strings.ToLower(u.Host)}, nil
}
