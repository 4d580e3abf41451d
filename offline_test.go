package dockerproxy_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/caddy-dockerproxy/dockerproxy"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

func TestCachedImagesPullWhenUpstreamFails(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 2, 16<<10)
	up.PushRandomImage(t, "team/other", "1", 1, 1024)
	e := startProxy(t, up, cachedBlock("tag_ttl 1h"))
	ref := e.ref("docker.example.test", "team/app:1")
	if err := e.pullImage(ref, nil, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()
	// The tag as these raw GETs ask for it (no Accept: a record of its own).
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	if resp, _ := e.get("GET", "/v2/team/app/manifests/1", tok, nil); resp.StatusCode != 200 {
		t.Fatalf("warming the tag: %d", resp.StatusCode)
	}

	for _, tc := range []struct {
		fault string
		// cacheStatus is what the tag's answer must say: Docker Hub
		// rate-limits GETs only, so its HEAD still revalidates the tag.
		cacheStatus string
	}{
		{"429 on manifest GETs", "docker_proxy; fwd=stale; fwd-status=200"},
		{"429 on every request", "docker_proxy; fwd=stale; fwd-status=429; detail=stale-if-error"},
		{"503", "docker_proxy; fwd=stale; fwd-status=503; detail=stale-if-error"},
		{"down", "docker_proxy; fwd=stale; detail=stale-if-error"},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			dockerproxy.AdvanceClock(time.Hour + time.Second) // the tag's record is stale again
			switch tc.fault {
			case "429 on manifest GETs":
				up.Faults.RateLimit(true, time.Minute)
			case "429 on every request":
				up.Faults.SetRegistryStatus(http.StatusTooManyRequests)
			case "503":
				up.Faults.SetRegistryStatus(http.StatusServiceUnavailable)
			case "down":
				if err := up.Faults.SetDown(true); err != nil {
					t.Fatal(err)
				}
			}
			defer up.Faults.Reset()
			tok := anonymousToken(t, e, "docker.example.test", "team/app")
			resp, _ := e.get("GET", "/v2/team/app/manifests/1", tok, nil)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != digest.String() {
				t.Errorf("cached tag: %d, digest %s, want 200 and %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), digest)
			}
			if got := resp.Header.Get("Cache-Status"); got != tc.cacheStatus {
				t.Errorf("Cache-Status %q, want %q", got, tc.cacheStatus)
			}
			if err := e.pullImage(ref, nil, img); err != nil {
				t.Errorf("cached image: %v", err)
			}
			tok = anonymousToken(t, e, "docker.example.test", "team/other")
			resp, body := e.get("GET", "/v2/team/other/manifests/1", tok, nil)
			if resp.StatusCode < 400 || !strings.Contains(body, `"errors"`) {
				t.Errorf("uncached image with upstream %s = %d %s, want a JSON error", tc.fault, resp.StatusCode, body)
			}
		})
	}

	// The tag moves upstream while manifest GETs are rate-limited: the HEAD
	// sees the new digest, the GET of its manifest answers 429, and the
	// last known manifest is served, marked stale.
	t.Run("tag moved, its new manifest 429", func(t *testing.T) {
		up.PushRandomImage(t, "team/app", "1", 1, 4<<10)
		dockerproxy.AdvanceClock(time.Hour + time.Second)
		up.Faults.RateLimit(true, time.Minute)
		defer up.Faults.Reset()
		tok := anonymousToken(t, e, "docker.example.test", "team/app")
		resp, _ := e.get("GET", "/v2/team/app/manifests/1", tok, nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != digest.String() {
			t.Errorf("tag whose new manifest is rate-limited: %d, digest %s, want 200 and the last known %s",
				resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), digest)
		}
		if got, want := resp.Header.Get("Cache-Status"), "docker_proxy; fwd=stale; fwd-status=429; detail=stale-if-error"; got != want {
			t.Errorf("Cache-Status %q, want %q", got, want)
		}
	})
}

func TestPrivateImageOfflineOnlyForConfirmedCredentials(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "alice-pw")
	up.AddUser("mallory", "mallory-pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 16<<10)
	cacheDir := t.TempDir()
	config := strings.Replace(cachedBlock("tag_ttl 1h"), "{DIR}/cache", cacheDir, 1)
	config = strings.Replace(config, "docker_proxy docker.io {", "docker_proxy docker.io {\n\t\tauth_key a-fixed-key-shared-by-instances", 1)
	e := startProxy(t, up, config)
	ref := e.ref("docker.example.test", "team/secret:v1")
	alice := &authn.Basic{Username: "alice", Password: "alice-pw"}
	if err := e.pullImage(ref, alice, img); err != nil {
		t.Fatal(err)
	}
	if err := e.pullImage(ref, &authn.Basic{Username: "mallory", Password: "mallory-pw"}, img); err == nil {
		t.Fatal("mallory pulled alice's image online")
	}
	// A config reload keeps what the upstream confirmed, with the store.
	e = startProxy(t, up, config)
	ref = e.ref("docker.example.test", "team/secret:v1")

	// Registry and token service down, tag stale.
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer up.Faults.Reset()
	dockerproxy.AdvanceClock(time.Hour + time.Second) // past tag_ttl, within the offline window
	if err := e.pullImage(ref, alice, img); err != nil {
		t.Errorf("alice, offline, credentials the upstream accepted before: %v", err)
	}
	if err := e.pullImage(ref, nil, img); err == nil {
		t.Error("anonymous client pulled the private image offline")
	}
	if err := e.pullImage(ref, &authn.Basic{Username: "alice", Password: "guess"}, img); err == nil {
		t.Error("a wrong password pulled the private image offline")
	}
	if err := e.pullImage(ref, &authn.Basic{Username: "mallory", Password: "mallory-pw"}, img); err == nil {
		t.Error("mallory pulled the private image offline")
	}
}

func TestTagListsServedStaleWhenUpstreamFails(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "1", 1, 1024)
	up.PushRandomImage(t, "team/app", "2", 1, 1024)
	up.SetPrivate("team/secret", "alice", "pw")
	up.PushRandomImage(t, "team/secret", "s1", 1, 1024)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	resp, fresh := e.get("GET", "/v2/team/app/tags/list", tok, nil)
	if resp.StatusCode != 200 || !strings.Contains(fresh, `"2"`) {
		t.Fatalf("online tags = %d %s", resp.StatusCode, fresh)
	}
	// Alice lists her private repository online: kept for her only.
	req, _ := http.NewRequest("GET", e.url("docker.example.test", "/v2/auth?scope=repository:team/secret:pull"), nil)
	req.SetBasicAuth("alice", "pw")
	aresp, err := (&http.Client{Transport: e.transport}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var atok struct{ Token string }
	_ = json.NewDecoder(aresp.Body).Decode(&atok)
	aresp.Body.Close()
	if resp, body := e.get("GET", "/v2/team/secret/tags/list", atok.Token, nil); resp.StatusCode != 200 || !strings.Contains(body, "s1") {
		t.Fatalf("alice's online tags = %d %s", resp.StatusCode, body)
	}
	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer up.Faults.Reset()
	resp, stale := e.get("GET", "/v2/team/app/tags/list", tok, nil)
	if resp.StatusCode != 200 || stale != fresh || !strings.Contains(resp.Header.Get("Cache-Status"), "stale-if-error") {
		t.Errorf("offline tags = %d %q %s", resp.StatusCode, resp.Header.Get("Cache-Status"), stale)
	}
	// Alice's kept list is not served to an anonymous client.
	resp, body := e.get("GET", "/v2/team/secret/tags/list", anonymousToken(t, e, "docker.example.test", "team/secret"), nil)
	if resp.StatusCode == 200 || strings.Contains(body, "s1") {
		t.Errorf("offline private tags = %d %s", resp.StatusCode, body)
	}
}
