package registry

// What a prefetch names: image references and platforms, parsed and
// checked before anything goes upstream.

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// PullRef is an image to prefetch: the registry as written (docker.io,
// ghcr.io, a URL upstream's host:port), the repository on it, and a tag
// or a digest.
type PullRef struct {
	Registry string
	Name     string
	Tag      string
	Digest   digest.Digest
}

// ParsePullRef parses a reference as docker pull takes it:
// docker.io/library/alpine:3.20, ghcr.io/org/tool@sha256:..., or a short
// Docker Hub name (alpine:3.20 is docker.io/library/alpine:3.20). Without a
// tag or digest the tag is latest; with both, the digest is what is fetched.
func ParsePullRef(s string) (PullRef, error) {
	if strings.TrimSpace(s) != s || s == "" {
		return PullRef{}, fmt.Errorf("image %q: not an image reference", s)
	}
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return PullRef{}, fmt.Errorf("image %q: %v", s, err)
	}
	ref := PullRef{Registry: reference.Domain(named), Name: reference.Path(named)}
	if canonical, ok := named.(reference.Canonical); ok {
		ref.Digest = canonical.Digest()
		if err := ref.Digest.Validate(); err != nil {
			return PullRef{}, fmt.Errorf("image %q: %v", s, err)
		}
	} else if tagged, ok := named.(reference.Tagged); ok {
		ref.Tag = tagged.Tag()
	} else {
		ref.Tag = "latest"
	}
	if err := validateName(ref.Name); err != nil {
		return PullRef{}, fmt.Errorf("image %q: %s", s, err.Message)
	}
	return ref, nil
}

// String is the reference in full: registry/name:tag or registry/name@digest.
func (r PullRef) String() string {
	if r.Digest != "" {
		return r.Registry + "/" + r.Name + "@" + r.Digest.String()
	}
	return r.Registry + "/" + r.Name + ":" + r.Tag
}

// nameOn is the repository as upstream up knows it: Docker Hub keeps its
// official images under library/, also when the reference named Docker
// Hub by one of its other names.
func (r PullRef) nameOn(up Upstream) string {
	if up.IsDockerHub() && !strings.Contains(r.Name, "/") {
		return "library/" + r.Name
	}
	return r.Name
}

// Platform is an operating system and CPU architecture, with the variant
// where one is given (linux/arm/v7).
type Platform struct {
	OS           string
	Architecture string
	Variant      string
}

var platformComponent = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// archAliases are the names uname and others use for the architectures
// that image indexes call amd64 and arm64.
var archAliases = map[string]string{"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}

// ParsePlatform parses os/architecture[/variant], such as linux/amd64 or
// linux/arm64/v8.
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return Platform{}, fmt.Errorf("platform %q: give os/architecture[/variant], such as linux/amd64 or linux/arm64/v8", s)
	}
	for _, part := range parts {
		if !platformComponent.MatchString(part) {
			return Platform{}, fmt.Errorf("platform %q: each part is lower-case letters, digits, '.', '_' or '-'", s)
		}
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if alias, ok := archAliases[p.Architecture]; ok {
		p.Architecture = alias
	}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// matches reports whether an index entry for platform q is one of p's
// images: the same OS and architecture, and p's variant if p names one.
// arm64's only variant is v8, so linux/arm64 and linux/arm64/v8 are one.
func (p Platform) matches(q Platform) bool {
	if p.OS != q.OS || p.Architecture != q.Architecture {
		return false
	}
	if p.Variant == "" {
		return true
	}
	return defaultVariant(p) == defaultVariant(q)
}

func defaultVariant(p Platform) string {
	if p.Architecture == "arm64" && p.Variant == "" {
		return "v8"
	}
	return p.Variant
}
