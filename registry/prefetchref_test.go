package registry

import (
	"strings"
	"testing"
)

func TestParsePullRef(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		in   string
		want PullRef
		str  string
	}{
		{"docker.io/library/alpine:3.20", PullRef{Registry: "docker.io", Name: "library/alpine", Tag: "3.20"}, "docker.io/library/alpine:3.20"},
		{"alpine", PullRef{Registry: "docker.io", Name: "library/alpine", Tag: "latest"}, "docker.io/library/alpine:latest"},
		{"bitnami/redis:7", PullRef{Registry: "docker.io", Name: "bitnami/redis", Tag: "7"}, "docker.io/bitnami/redis:7"},
		{"ghcr.io/org/tool@" + d, PullRef{Registry: "ghcr.io", Name: "org/tool", Digest: d}, "ghcr.io/org/tool@" + d},
		{"ghcr.io/org/tool:1@" + d, PullRef{Registry: "ghcr.io", Name: "org/tool", Digest: d}, "ghcr.io/org/tool@" + d},
		{"127.0.0.1:5000/team/app:1", PullRef{Registry: "127.0.0.1:5000", Name: "team/app", Tag: "1"}, "127.0.0.1:5000/team/app:1"},
		{"localhost/app", PullRef{Registry: "localhost", Name: "app", Tag: "latest"}, "localhost/app:latest"},
	} {
		got, err := ParsePullRef(tc.in)
		if err != nil || got != tc.want || got.String() != tc.str {
			t.Errorf("ParsePullRef(%q) = %+v (%s), %v; want %+v (%s)", tc.in, got, got.String(), err, tc.want, tc.str)
		}
	}
	for _, in := range []string{
		"", " alpine", "alpine ", "docker.io/Library/alpine", "alpine:", "alpine:-x", "alpine@sha256:abc",
		"alpine@md5:0123456789abcdef0123456789abcdef", "docker.io//alpine", "https://docker.io/alpine", "alpine:" + strings.Repeat("x", 129),
	} {
		if got, err := ParsePullRef(in); err == nil {
			t.Errorf("ParsePullRef(%q) = %+v, want an error", in, got)
		}
	}
}

func TestImageRefNameOnDockerHub(t *testing.T) {
	hub, _ := ParseUpstream("docker.io", nil)
	ghcr, _ := ParseUpstream("ghcr.io", nil)
	// index.docker.io is Docker Hub too; the reference grammar does not
	// know that name, so library/ comes from the upstream.
	ref, err := ParsePullRef("index.docker.io/alpine:3")
	if err != nil {
		t.Fatal(err)
	}
	if got := ref.nameOn(hub); got != "library/alpine" {
		t.Errorf("on Docker Hub: %s, want library/alpine", got)
	}
	ref, _ = ParsePullRef("ghcr.io/alpine:3")
	if got := ref.nameOn(ghcr); got != "alpine" {
		t.Errorf("on ghcr.io: %s, want alpine", got)
	}
}

func TestParsePlatform(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Platform
	}{
		{"linux/amd64", Platform{"linux", "amd64", ""}},
		{"linux/arm64/v8", Platform{"linux", "arm64", "v8"}},
		{"linux/arm/v7", Platform{"linux", "arm", "v7"}},
		{"linux/x86_64", Platform{"linux", "amd64", ""}},
		{"linux/aarch64", Platform{"linux", "arm64", ""}},
		{"windows/amd64", Platform{"windows", "amd64", ""}},
	} {
		if got, err := ParsePlatform(tc.in); err != nil || got != tc.want {
			t.Errorf("ParsePlatform(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "linux", "linux/", "/amd64", "linux/amd64/v8/x", "Linux/amd64", "linux/amd 64", "linux/*"} {
		if got, err := ParsePlatform(in); err == nil {
			t.Errorf("ParsePlatform(%q) = %+v, want an error", in, got)
		}
	}
}

func TestPlatformMatches(t *testing.T) {
	for _, tc := range []struct {
		want, entry string
		match       bool
	}{
		{"linux/amd64", "linux/amd64", true},
		{"linux/arm64", "linux/arm64/v8", true},
		{"linux/arm64/v8", "linux/arm64", true},
		{"linux/arm64/v8", "linux/arm64/v8", true},
		{"linux/arm/v7", "linux/arm/v6", false},
		{"linux/arm", "linux/arm/v6", true},
		{"linux/amd64", "linux/arm64", false},
		{"linux/amd64", "windows/amd64", false},
		{"linux/arm64/v9", "linux/arm64", false},
	} {
		want, _ := ParsePlatform(tc.want)
		entry, _ := ParsePlatform(tc.entry)
		if got := want.matches(entry); got != tc.match {
			t.Errorf("%s matches %s = %v, want %v", tc.want, tc.entry, got, tc.match)
		}
	}
}

func FuzzParsePullRef(f *testing.F) {
	for _, s := range []string{"docker.io/library/alpine:3.20", "alpine", "ghcr.io/org/tool@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "127.0.0.1:5000/a/b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ref, err := ParsePullRef(s)
		if err != nil {
			return
		}
		// What parses names a repository the request path accepts, and
		// reads back as itself.
		if validateName(ref.Name) != nil || (ref.Tag == "") == (ref.Digest == "") {
			t.Fatalf("ParsePullRef(%q) = %+v", s, ref)
		}
		again, err := ParsePullRef(ref.String())
		if err != nil || again != ref {
			t.Fatalf("ParsePullRef(%q) = %+v; its String %q parses as %+v, %v", s, ref, ref.String(), again, err)
		}
	})
}

func FuzzParsePlatform(f *testing.F) {
	for _, s := range []string{"linux/amd64", "linux/arm64/v8", "windows/amd64", "a/b/c/d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePlatform(s)
		if err != nil {
			return
		}
		again, err := ParsePlatform(p.String())
		if err != nil || again != p || !p.matches(p) {
			t.Fatalf("ParsePlatform(%q) = %+v; its String %q parses as %+v, %v", s, p, p.String(), again, err)
		}
	})
}
