package dockerproxy_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

func TestRootRedirectsToV2AndUnknownHostListsRoutes(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	e := startProxy(t, up, domainBlock)

	resp, _ := e.do("GET", "docker.example.test", "/", nil)
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/v2/" {
		t.Errorf("GET / = %d Location %q, want 301 /v2/", resp.StatusCode, resp.Header.Get("Location"))
	}

	before := up.Counters.RegistryRequests()
	for _, path := range []string{"/", "/v2/", "/v2/library/alpine/manifests/latest", "/v2/auth?ns=ghcr.io", "/v2/ghcr.io/team/app/manifests/1"} {
		resp, body := e.do("GET", "unknown.example.test", path, nil)
		if resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Fatalf("unknown host %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		var got struct {
			Routes  map[string]string `json:"routes"`
			Message string            `json:"message"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("route list is not JSON: %v: %s", err, body)
		}
		if got.Message != "Available registry routes" || got.Routes["docker.example.test"] != up.URL || got.Routes["ghcr.example.test"] != up.URL {
			t.Errorf("route list = %+v", got)
		}
		if got.Routes["quay.example.test"] != "https://quay.io" || got.Routes["k8s.example.test"] != "https://registry.k8s.io" {
			t.Errorf("seed table missing from route list: %+v", got.Routes)
		}
	}
	if n := up.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("unknown host reached the upstream %d times", n)
	}
}

func TestDockerHubOneComponentNamesRedirectToLibrary(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	e := startProxy(t, up, domainBlock)
	resp, _ := e.do("GET", "docker.example.test", "/v2/busybox/manifests/latest?foo=bar", nil)
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/v2/library/busybox/manifests/latest?foo=bar" {
		t.Errorf("= %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// Not on other upstreams.
	resp, _ = e.do("GET", "ghcr.example.test", "/v2/busybox/manifests/latest", nil)
	if resp.StatusCode == http.StatusMovedPermanently {
		t.Error("ghcr route redirected a one-component name")
	}

	// A real client pulls a one-component name through the redirect.
	img := up.PushRandomImage(t, "library/busybox", "latest", 2, 4096)
	if err := e.pullImage(e.ref("docker.example.test", "busybox:latest"), nil, img); err != nil {
		t.Fatalf("pull busybox: %v", err)
	}
}

func TestPullsThroughDomainAndSubdomainBlocks(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 3, 64<<10)
	idx := up.PushRandomIndex(t, "team/multi", "v1",
		v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"})

	t.Run("domain block", func(t *testing.T) {
		e := startProxy(t, up, domainBlock)
		for _, host := range []string{"docker.example.test", "ghcr.example.test", "registry.docker.example.test", "hub.example.test"} {
			if err := e.pullImage(e.ref(host, "team/app:1"), nil, img); err != nil {
				t.Errorf("%s: %v", host, err)
			}
		}
		pullIndex(t, e, e.ref("ghcr.example.test", "team/multi:v1"), idx)
	})
	t.Run("per-subdomain block", func(t *testing.T) {
		e := startProxy(t, up, `http://:{PORT} {
	docker_proxy {UPSTREAM} {
		cache off
	}
}`)
		if err := e.pullImage(e.ref("ghcr.example.test", "team/app:1"), nil, img); err != nil {
			t.Error(err)
		}
		pullIndex(t, e, e.ref("ghcr.example.test", "team/multi:v1"), idx)
	})
	t.Run("host-matched site blocks", func(t *testing.T) {
		// Two sites side by side, each with its own upstream, as users
		// write them; the same repository holds other images on each.
		ghcr := testupstream.Start(t, testupstream.Options{})
		ghcrImg := ghcr.PushRandomImage(t, "team/app", "1", 2, 8<<10)
		busybox := up.PushRandomImage(t, "library/busybox", "latest", 1, 4<<10)
		e := startProxy(t, up, strings.Replace(`http://docker.example.test:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
	}
}

http://ghcr.example.test:{PORT} {
	docker_proxy ghcr.io {
		upstream ghcr.io GHCR
	}
}`, "GHCR", ghcr.URL, 1))
		hubBefore := up.Counters.ManifestGETsFor("team/app")
		if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
			t.Errorf("docker site: %v", err)
		}
		if err := e.pullImage(e.ref("ghcr.example.test", "team/app:1"), nil, ghcrImg); err != nil {
			t.Errorf("ghcr site: %v", err)
		}
		// Docker Hub's rule on the docker site only.
		if err := e.pullImage(e.ref("docker.example.test", "busybox:latest"), nil, busybox); err != nil {
			t.Errorf("docker site, one-component name: %v", err)
		}
		resp, _ := e.do("GET", "ghcr.example.test", "/v2/busybox/manifests/latest", nil)
		if resp.StatusCode == http.StatusMovedPermanently {
			t.Error("the ghcr site redirected a one-component name to library/")
		}
		if n := up.Counters.ManifestGETsFor("team/app") - hubBefore; n != 1 {
			t.Errorf("the docker upstream served team/app %d times, want 1", n)
		}
		if n := ghcr.Counters.ManifestGETsFor("team/app"); n != 1 {
			t.Errorf("the ghcr upstream served team/app %d times, want 1", n)
		}
		if up.Counters.ManifestGETsFor("library/busybox") != 1 || ghcr.Counters.ManifestGETsFor("library/busybox") != 0 {
			t.Errorf("library/busybox: %d GETs on the docker upstream, %d on ghcr; want 1 and 0",
				up.Counters.ManifestGETsFor("library/busybox"), ghcr.Counters.ManifestGETsFor("library/busybox"))
		}
	})
}

func TestInvalidInputNeverReachesUpstream(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	e := startProxy(t, up, domainBlock)
	cases := []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/v2/Team/App/manifests/latest", 400, "NAME_INVALID"},
		{"GET", "/v2/team/app-/manifests/latest", 400, "NAME_INVALID"},
		{"GET", "/v2/team//app/manifests/latest", 400, "NAME_INVALID"},
		{"GET", "/v2/" + strings.Repeat("a/", 130) + "b/manifests/latest", 400, "NAME_INVALID"},
		{"GET", "/v2/team/app/manifests/bad..tag!", 400, "TAG_INVALID"},
		{"GET", "/v2/team/app/manifests/sha256:abc", 400, "DIGEST_INVALID"},
		{"GET", "/v2/team/app/blobs/sha256:" + strings.Repeat("z", 64), 400, "DIGEST_INVALID"},
		{"GET", "/v2/team/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"},
		{"GET", "/v2/team/app/blobs/latest", 400, "DIGEST_INVALID"},
		{"POST", "/v2/team/app/blobs/uploads/", 405, "UNSUPPORTED"},
		{"PUT", "/v2/team/app/manifests/latest", 405, "UNSUPPORTED"},
		{"DELETE", "/v2/team/app/blobs/sha256:" + strings.Repeat("a", 64), 405, "UNSUPPORTED"},
		{"GET", "/v2/_catalog", 404, "UNSUPPORTED"},
		{"GET", "/v2/team/app/nothing", 404, "UNSUPPORTED"},
		{"GET", "/v2/team/app/manifests/latest?ns=evil.example.com", 404, "NAME_UNKNOWN"},
		{"GET", "/favicon.ico", 404, "UNSUPPORTED"},
		{"GET", "/v1/_ping", 404, "UNSUPPORTED"},
	}
	before := up.Counters.RegistryRequests()
	for _, c := range cases {
		resp, body := e.do(c.method, "docker.example.test", c.path, nil)
		var got struct {
			Errors []struct{ Code, Message string }
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil || len(got.Errors) != 1 {
			t.Errorf("%s %s: not a registry error: %d %s", c.method, c.path, resp.StatusCode, body)
			continue
		}
		if resp.StatusCode != c.status || got.Errors[0].Code != c.code {
			t.Errorf("%s %s = %d %s, want %d %s", c.method, c.path, resp.StatusCode, got.Errors[0].Code, c.status, c.code)
		}
	}
	if n := up.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("invalid requests reached the upstream %d times", n)
	}
}

func TestUnreachableUpstreamIs502JSON(t *testing.T) {
	e := startProxy(t, nil, `http://:{PORT} {
	docker_proxy http://127.0.0.1:`+freePort(t)+` {
		cache off
	}
}`)
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	resp, body := e.do("GET", "docker.example.test", "/v2/team/app/manifests/latest", http.Header{"Authorization": {"Bearer " + tok}})
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, `"UNAVAILABLE"`) || !strings.Contains(body, "cannot be reached") {
		t.Errorf("= %d %s", resp.StatusCode, body)
	}
	if strings.Contains(body, "127.0.0.1") {
		t.Errorf("the error shows the client the upstream's internal address: %s", body)
	}
}

func TestMirrorHostRoutesByPathComponentAndNs(t *testing.T) {
	hub := testupstream.Start(t, testupstream.Options{Service: "hub.test"})
	ghcr := testupstream.Start(t, testupstream.Options{Service: "ghcr.test"})
	hubImg := hub.PushRandomImage(t, "library/alpine", "3", 1, 2048)
	ghcrImg := ghcr.PushRandomImage(t, "team/app", "1", 2, 2048)
	e := startProxy(t, hub, strings.Replace(`http://:{PORT} {
	docker_proxy {
		domain example.test
		upstream docker.io {UPSTREAM}
		upstream ghcr.io GHCR
		route mirror.example.test docker.io
		cache off
	}
}`, "GHCR", ghcr.URL, 1))

	// A registry host as the first path component: mirror/ghcr.io/team/app.
	if err := e.pullImage(e.ref("mirror.example.test", "ghcr.io/team/app:1"), nil, ghcrImg); err != nil {
		t.Errorf("path-style ghcr.io: %v", err)
	}
	if err := e.pullImage(e.ref("mirror.example.test", "docker.io/library/alpine:3"), nil, hubImg); err != nil {
		t.Errorf("path-style docker.io: %v", err)
	}
	// Without one, the host's route.
	if err := e.pullImage(e.ref("mirror.example.test", "library/alpine:3"), nil, hubImg); err != nil {
		t.Errorf("mirror host default route: %v", err)
	}

	// containerd's ?ns=: the challenge's realm keeps it, so the token
	// request reaches the same upstream.
	resp, _ := e.do("GET", "mirror.example.test", "/v2/?ns=ghcr.io", nil)
	ch := resp.Header.Get("Www-Authenticate")
	if resp.StatusCode != 401 || !strings.Contains(ch, `realm="http://mirror.example.test:`+e.port+`/v2/auth?ns=ghcr.io"`) || !strings.Contains(ch, `service="ghcr.test"`) {
		t.Fatalf("ns challenge = %d %s", resp.StatusCode, ch)
	}
	resp, body := e.do("GET", "mirror.example.test", "/v2/auth?ns=ghcr.io&scope=repository:team/app:pull&service=ghcr.test", nil)
	var tr struct{ Token string }
	if err := json.Unmarshal([]byte(body), &tr); err != nil || resp.StatusCode != 200 {
		t.Fatalf("ns token: %d %s", resp.StatusCode, body)
	}
	d, _ := ghcrImg.Digest()
	resp, _ = e.do("GET", "mirror.example.test", "/v2/team/app/manifests/1?ns=ghcr.io",
		http.Header{"Authorization": {"Bearer " + tr.Token}, "Accept": {"application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json"}})
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Errorf("ns=ghcr.io manifest = %d %s, want %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), d)
	}
}
