package dockerproxy_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// domainBlock is one site block serving the seeds' host table on
// example.test, with Docker Hub and ghcr.io pointed at the test upstream.
const domainBlock = `http://:{PORT} {
	docker_proxy {
		domain example.test
		upstream docker.io {UPSTREAM}
		upstream ghcr.io {UPSTREAM}
		cache off
	}
}`

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

func TestBaseChallengePointsAtProxyRealm(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{Service: "registry.docker.io"})
	e := startProxy(t, up, domainBlock)

	resp, body := e.do("GET", "docker.example.test", "/v2/", nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/v2/ = %d %s, want 401", resp.StatusCode, body)
	}
	want := `Bearer realm="http://docker.example.test:` + e.port + `/v2/auth",service="registry.docker.io"`
	if got := resp.Header.Get("Www-Authenticate"); got != want {
		t.Errorf("challenge = %s\nwant        %s", got, want)
	}
	if strings.Contains(resp.Header.Get("Www-Authenticate"), up.RealmURL) {
		t.Error("the upstream's realm leaked to the client")
	}

	// Every 401 is rewritten, not only /v2/'s: a private repository.
	up.SetPrivate("team/secret", "alice", "s3cret")
	up.PushRandomImage(t, "team/secret", "v1", 1, 1024)
	resp, _ = e.do("GET", "docker.example.test", "/v2/team/secret/manifests/v1", nil)
	ch := resp.Header.Get("Www-Authenticate")
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(ch, `realm="http://docker.example.test:`+e.port+`/v2/auth"`) ||
		!strings.Contains(ch, `scope="repository:team/secret:pull"`) {
		t.Errorf("private manifest = %d, challenge %q", resp.StatusCode, ch)
	}
}

// TestBaseAnswersBasicCredentialsWithChallenge: /v2/ is 200 only to one of
// the proxy's tokens. Basic credentials get the challenge, as from a
// registry with token authentication, and are checked at the realm: a
// docker-login-like client logs in with the right password only.
func TestBaseAnswersBasicCredentialsWithChallenge(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{Service: "registry.docker.io"})
	up.SetPrivate("team/secret", "alice", "s3cret")
	img := up.PushRandomImage(t, "team/secret", "v1", 1, 4096)
	e := startProxy(t, up, domainBlock)
	realm := `realm="http://docker.example.test:` + e.port + `/v2/auth"`
	basic := func(user, pass string) http.Header {
		return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}}
	}
	for _, pass := range []string{"s3cret", "wrong"} {
		resp, body := e.do("GET", "docker.example.test", "/v2/", basic("alice", pass))
		ch := resp.Header.Get("Www-Authenticate")
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(ch, "Bearer ") || !strings.Contains(ch, realm) || !strings.Contains(body, "UNAUTHORIZED") {
			t.Errorf("/v2/ with Basic alice:%s = %d %q %s, want 401 with the proxy's challenge", pass, resp.StatusCode, ch, body)
		}
	}
	resp, _ := e.do("GET", "docker.example.test", "/v2/", http.Header{"Authorization": {"Bearer " + loginToken(t, e, "alice", "s3cret", "team/secret")}})
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/v2/ with the proxy's token = %d, want 200", resp.StatusCode)
	}

	// docker login: ping, token from the realm with the password, then
	// /v2/ with the token.
	reg, err := name.NewRegistry("docker.example.test:"+e.port, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	scopes := []string{reg.Repo("team", "secret").Scope(transport.PullScope)}
	login := func(pass string) (int, error) {
		rt, err := transport.NewWithContext(context.Background(), reg, &authn.Basic{Username: "alice", Password: pass}, e.transport, scopes)
		if err != nil {
			return 0, err
		}
		resp, err := (&http.Client{Transport: rt}).Get(e.url("docker.example.test", "/v2/"))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if status, err := login("s3cret"); err != nil || status != http.StatusOK {
		t.Errorf("login with the password = %d, %v; want 200", status, err)
	}
	before := up.Counters.TokenRequests()
	if _, err := login("wrong"); !isStatus(err, http.StatusUnauthorized) {
		t.Errorf("login with a wrong password: %v, want 401", err)
	}
	if up.Counters.TokenRequests() == before {
		t.Error("the wrong password was not checked at the upstream's realm")
	}
	if err := e.pullImage(e.ref("docker.example.test", "team/secret:v1"), &authn.Basic{Username: "alice", Password: "s3cret"}, img); err != nil {
		t.Errorf("pull with Basic credentials: %v", err)
	}
}

func TestRealmSchemeFromTrustedProxyOnly(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	e := startProxy(t, up, domainBlock)
	// The test client connects from 127.0.0.1, which is not in
	// trusted_proxies (127.0.0.2/32): X-Forwarded-Proto is ignored.
	resp, _ := e.do("GET", "docker.example.test", "/v2/", http.Header{"X-Forwarded-Proto": {"https"}})
	if ch := resp.Header.Get("Www-Authenticate"); !strings.Contains(ch, `realm="http://`) {
		t.Errorf("untrusted X-Forwarded-Proto changed the realm: %s", ch)
	}

	// From a trusted proxy it counts.
	tr := e.transport.Clone()
	dialer := &netDialer{local: "127.0.0.2"}
	tr.DialContext = dialer.dialTo("127.0.0.1:" + e.port)
	req, _ := http.NewRequest("GET", e.url("docker.example.test", "/v2/"), nil)
	req.Header.Set("X-Forwarded-Proto", "https")
	resp2, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if ch := resp2.Header.Get("Www-Authenticate"); !strings.Contains(ch, `realm="https://docker.example.test:`+e.port+`/v2/auth"`) {
		t.Errorf("trusted X-Forwarded-Proto ignored: %s", ch)
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

func TestTokenEndpointKeepsScopesAndAddsLibrary(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	e := startProxy(t, up, domainBlock)
	resp, body := e.do("GET", "docker.example.test",
		"/v2/auth?service=registry.test&scope=repository:busybox:pull&scope=repository:team/app:pull,push", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("auth = %d %s", resp.StatusCode, body)
	}
	var tr struct {
		Token, AccessToken, Scope string
		ExpiresIn                 int `json:"expires_in"`
	}
	if err := json.Unmarshal([]byte(body), &tr); err != nil {
		t.Fatal(err)
	}
	if tr.Token == "" || tr.ExpiresIn <= 0 {
		t.Errorf("token response %s", body)
	}
	if tr.Scope != "repository:library/busybox:pull repository:team/app:pull,push" {
		t.Errorf("scopes = %q", tr.Scope)
	}

	// Malformed scopes never reach the upstream realm.
	before := up.Counters.RealmRequests()
	for _, q := range []string{"scope=repository:UPPER:pull", "scope=repository::pull", "scope=nonsense", `scope=repository:a:pull"`} {
		resp, body := e.do("GET", "docker.example.test", "/v2/auth?"+q, nil)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "invalid_scope") {
			t.Errorf("%s = %d %s", q, resp.StatusCode, body)
		}
	}
	if up.Counters.RealmRequests() != before {
		t.Error("a malformed scope reached the upstream realm")
	}

	// The token pulls what it was asked for; a forged one is refused.
	// (Tokens carrying a login are bound to their upstream:
	// TestLoggedInTokenIsBoundToItsUpstream.)
	img := up.PushRandomImage(t, "library/busybox", "latest", 1, 1024)
	d, _ := img.Digest()
	resp, _ = e.do("GET", "docker.example.test", "/v2/library/busybox/manifests/latest", http.Header{"Authorization": {"Bearer " + tr.Token}})
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Errorf("manifest with the proxy's token = %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = e.do("GET", "docker.example.test", "/v2/library/busybox/manifests/latest", http.Header{"Authorization": {"Bearer forged.token"}})
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("Www-Authenticate"), `error="invalid_token"`) {
		t.Errorf("forged token = %d %v", resp.StatusCode, resp.Header)
	}
}

func TestMalformedTokenRequestsNeverReachUpstream(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	// A fresh proxy: it has not learnt the upstream's challenge yet, so
	// anything that asked for it would show in the counters.
	e := startProxy(t, up, domainBlock)
	basic := func(user, pass string) http.Header {
		return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}}
	}
	form := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	manyScopes := url.Values{}
	for i := range 65 {
		manyScopes.Add("scope", fmt.Sprintf("repository:team/app%d:pull", i))
	}
	cases := []struct {
		name, method, path string
		header             http.Header
		body               string
		status             int
	}{
		{"invalid scope", "GET", "/v2/auth?scope=repository:Team/App:pull", nil, "", 400},
		{"scope without actions", "GET", "/v2/auth?scope=repository:team/app", nil, "", 400},
		{"scope too long", "GET", "/v2/auth?scope=repository:" + strings.Repeat("a", 600) + ":pull", nil, "", 400},
		{"too many scopes", "GET", "/v2/auth?" + manyScopes.Encode(), nil, "", 400},
		{"query too long", "GET", "/v2/auth?service=" + strings.Repeat("s", 17<<10), nil, "", 400},
		{"PUT", "PUT", "/v2/auth", nil, "", 405},
		{"DELETE", "DELETE", "/v2/auth?scope=repository:team/app:pull", nil, "", 405},
		{"Bearer Authorization", "GET", "/v2/auth?scope=repository:team/app:pull", http.Header{"Authorization": {"Bearer dp1.whatever"}}, "", 400},
		{"Basic that does not decode", "GET", "/v2/auth", http.Header{"Authorization": {"Basic !!!"}}, "", 400},
		{"empty username", "GET", "/v2/auth", basic("", "pw"), "", 400},
		{"username too long", "GET", "/v2/auth", basic(strings.Repeat("u", 300), "pw"), "", 400},
		{"password too long", "GET", "/v2/auth", basic("alice", strings.Repeat("p", 5<<10)), "", 400},
		{"credentials and a bad scope", "GET", "/v2/auth?scope=repository:a/../b:pull", basic("alice", "pw"), "", 400},
		{"unsupported grant", "POST", "/v2/auth", form, "grant_type=client_credentials&scope=repository:team/app:pull", 400},
		{"bad scope in a form", "POST", "/v2/auth", form, "grant_type=password&username=alice&password=pw&scope=repository:UPPER:pull", 400},
		{"form too large", "POST", "/v2/auth", form, "scope=" + strings.Repeat("a", 70<<10), 400},
	}
	for _, c := range cases {
		resp, body := e.doBody(c.method, "docker.example.test", c.path, c.header, c.body)
		var got struct {
			Error  string
			Errors []struct{ Code, Message string }
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil || got.Error == "" || len(got.Errors) != 1 {
			t.Errorf("%s: not a token endpoint error: %d %.200s", c.name, resp.StatusCode, body)
			continue
		}
		if resp.StatusCode != c.status {
			t.Errorf("%s = %d %s, want %d", c.name, resp.StatusCode, body, c.status)
		}
	}
	if n, m := up.Counters.RegistryRequests(), up.Counters.RealmRequests(); n != 0 || m != 0 {
		t.Errorf("malformed token requests reached the upstream: %d registry and %d realm requests", n, m)
	}
	// A well-formed one does ask the upstream (so the counters can tell).
	anonymousToken(t, e, "docker.example.test", "team/app")
	if up.Counters.RegistryRequests() == 0 {
		t.Error("a token request did not learn the upstream's challenge")
	}
}

func TestTokenEndpointIgnoresRealmAndServiceFromClient(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{Service: "registry.docker.io"})
	elsewhere := testupstream.Start(t, testupstream.Options{Service: "elsewhere.test"})
	up.SetPrivate("team/secret", "alice", "s3cret")
	elsewhere.AddUser("alice", "s3cret")
	img := up.PushRandomImage(t, "team/secret", "v1", 1, 1024)
	e := startProxy(t, up, domainBlock)

	q := url.Values{
		"scope":   {"repository:team/secret:pull"},
		"realm":   {elsewhere.Realm},
		"service": {elsewhere.Service},
	}
	h := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))}}
	resp, body := e.do("GET", "docker.example.test", "/v2/auth?"+q.Encode(), h)
	var tr struct{ Token string }
	if err := json.Unmarshal([]byte(body), &tr); err != nil || resp.StatusCode != 200 || tr.Token == "" {
		t.Fatalf("token with a client-given realm and service = %d %s", resp.StatusCode, body)
	}
	if n := elsewhere.Counters.RealmRequests(); n != 0 {
		t.Errorf("the realm named by the client got %d requests", n)
	}
	if up.Counters.TokenRequests() == 0 {
		t.Error("the upstream's own realm was not asked")
	}
	// The token is the upstream's, for its own service (its realm refuses
	// any other): it pulls the private manifest.
	d, _ := img.Digest()
	resp, _ = e.do("GET", "docker.example.test", "/v2/team/secret/manifests/v1", http.Header{"Authorization": {"Bearer " + tr.Token}})
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Errorf("private manifest with the token = %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
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

func pullIndex(t *testing.T, e *proxyEnv, ref interface{ String() string }, want v1.ImageIndex) {
	t.Helper()
	r := e.ref(strings.SplitN(ref.String(), ":", 2)[0], strings.SplitN(ref.String(), "/", 2)[1])
	got, err := remote.Index(r, e.remoteOptions(nil)...)
	if err != nil {
		t.Fatalf("index: %v", err)
	}
	gd, _ := got.Digest()
	wd, _ := want.Digest()
	if gd != wd {
		t.Fatalf("index digest %s, want %s", gd, wd)
	}
	wm, _ := want.IndexManifest()
	for _, desc := range wm.Manifests {
		wi, _ := want.Image(desc.Digest)
		gi, err := got.Image(desc.Digest)
		if err != nil {
			t.Fatalf("child %s: %v", desc.Digest, err)
		}
		if err := testupstream.SameImage(gi, wi); err != nil {
			t.Fatalf("child %s (%s): %v", desc.Digest, desc.Platform, err)
		}
	}
}

func TestPrivateRepositoryWithClientCredentials(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "s3cret-pass")
	up.AddUser("mallory", "other-pass")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 32<<10)
	e := startProxy(t, up, domainBlock)
	ref := e.ref("docker.example.test", "team/secret:v1")

	if err := e.pullImage(ref, &authn.Basic{Username: "alice", Password: "s3cret-pass"}, img); err != nil {
		t.Fatalf("logged-in pull: %v", err)
	}
	err := e.pullImage(ref, nil, img)
	if !isStatus(err, http.StatusUnauthorized) {
		t.Errorf("anonymous pull of a private repo: %v, want 401", err)
	}
	err = e.pullImage(ref, &authn.Basic{Username: "alice", Password: "wrong"}, img)
	if !isStatus(err, http.StatusUnauthorized) {
		t.Errorf("wrong password: %v, want 401", err)
	}
	err = e.pullImage(ref, &authn.Basic{Username: "mallory", Password: "other-pass"}, img)
	if !isStatus(err, http.StatusUnauthorized) && !isStatus(err, http.StatusForbidden) {
		t.Errorf("another user: %v, want refused", err)
	}
}

// TestSecretsStayOutOfLogs: client credentials, configured credentials,
// the upstream's tokens and the proxy's own appear in no log, at any
// level, whatever the pull (logged in, refused, through configured
// credentials, from the cache).
func TestSecretsStayOutOfLogs(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "s3cret-pass")
	up.SetPrivate("team/robot", "robot", "robot-token")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 32<<10)
	robotImg := up.PushRandomImage(t, "team/robot", "v1", 1, 16<<10)
	t.Setenv("TEST_ROBOT_TOKEN", "robot-token")
	// The site's access log is on too: request headers are logged there.
	e := startProxy(t, up, `http://:{PORT} {
	log {
		output file {DIR}/access.log
	}
	docker_proxy {
		domain example.test
		upstream docker.io {UPSTREAM}
		upstream ghcr.io {UPSTREAM}
		credentials ghcr.io robot {env.TEST_ROBOT_TOKEN}
		cache {DIR}/cache
	}
}`)
	ref := e.ref("docker.example.test", "team/secret:v1")
	alice := &authn.Basic{Username: "alice", Password: "s3cret-pass"}
	for range 2 { // a miss, then a hit
		if err := e.pullImage(ref, alice, img); err != nil {
			t.Fatalf("logged-in pull: %v", err)
		}
	}
	if err := e.pullImage(ref, &authn.Basic{Username: "alice", Password: "wrong-pass-123"}, img); !isStatus(err, http.StatusUnauthorized) {
		t.Errorf("wrong password: %v, want 401", err)
	}
	if err := e.pullImage(e.ref("ghcr.example.test", "team/robot:v1"), nil, robotImg); err != nil {
		t.Fatalf("pull with the configured credentials: %v", err)
	}

	caddyLog, err := os.ReadFile(e.logPath)
	if err != nil || !strings.Contains(string(caddyLog), `"level":"debug"`) {
		t.Fatalf("Caddy's log has no debug entries, so this check proves little: %v\n%.600s", err, caddyLog)
	}
	access, err := os.ReadFile(filepath.Join(filepath.Dir(e.dataDir), "access.log"))
	if err != nil || !strings.Contains(string(access), "/v2/team/secret/manifests/v1") {
		t.Fatalf("access log not written: %v", err)
	}
	if !strings.Contains(string(access), `"Authorization":["REDACTED"]`) {
		t.Errorf("the access log does not show the (redacted) Authorization header, so this check proves nothing:\n%.600s", access)
	}
	tokens := up.IssuedTokens()
	if len(tokens) < 2 {
		t.Fatalf("the upstream issued %d tokens, want alice's and the proxy's", len(tokens))
	}
	secrets := map[string]string{
		"the proxy's token prefix":           "dp1.",
		"alice's password":                   "s3cret-pass",
		"alice's Basic credentials":          "alice:s3cret-pass",
		"alice's Basic credentials, base64":  base64.StdEncoding.EncodeToString([]byte("alice:s3cret-pass")),
		"a refused password":                 "wrong-pass-123",
		"the configured secret":              "robot-token",
		"the configured credentials, base64": base64.StdEncoding.EncodeToString([]byte("robot:robot-token")),
	}
	for i, tok := range tokens {
		secrets[fmt.Sprintf("upstream token %d", i)] = tok
	}
	for what, secret := range secrets {
		if strings.Contains(string(caddyLog), secret) {
			t.Errorf("%s is in Caddy's log", what)
		}
		if strings.Contains(string(access), secret) {
			t.Errorf("%s is in the access log", what)
		}
	}
}

func TestConfiguredCredentialsServeAnonymousClients(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "robot", "robot-token")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 16<<10)
	t.Setenv("TEST_ROBOT_TOKEN", "robot-token")
	e := startProxy(t, up, `http://:{PORT} {
	docker_proxy {UPSTREAM} {
		credentials robot {env.TEST_ROBOT_TOKEN}
		cache off
	}
}`)
	if err := e.pullImage(e.ref("docker.example.test", "team/secret:v1"), nil, img); err != nil {
		t.Fatalf("anonymous pull with configured credentials: %v", err)
	}
	if e.logContains("robot-token") {
		t.Error("the configured secret is in Caddy's log")
	}
}

func TestBlobRedirectFollowedWithoutCredentials(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 1, 256<<10)
	e := startProxy(t, up, domainBlock)
	before, beforeReqs := up.Counters.ObjectStoreGETs(), up.Counters.ObjectStoreRequests()
	// The object store fails any request with Authorization: the pull
	// works only if the proxy followed the 307 with a clean GET.
	if err := e.pullImage(e.ref("docker.example.test", "team/secret:v1"), &authn.Basic{Username: "alice", Password: "pw"}, img); err != nil {
		t.Fatal(err)
	}
	if up.Counters.ObjectStoreGETs() == before {
		t.Error("blobs did not come through the object store redirect")
	}
	served, reqs := up.Counters.ObjectStoreGETs()-before, up.Counters.ObjectStoreRequests()-beforeReqs
	if served != reqs {
		t.Errorf("object store refused %d of %d requests (credentials sent to the redirect target?)", reqs-served, reqs)
	}
}

// headerTransport adds headers to every request, as a browser, a CI
// runner or a corporate proxy in front of a registry client may.
type headerTransport struct {
	base   http.RoundTripper
	header http.Header
}

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, vs := range h.header {
		r.Header[k] = vs
	}
	return h.base.RoundTrip(r)
}

// TestClientHeadersAndCredentialsGoOnlyWhereTheyBelong: a logged-in client
// pulls, sending cookies and a header of its own. Its Basic credentials
// reach the upstream's realm and nothing else; the blob redirect target
// gets none of the client's headers but Range.
func TestClientHeadersAndCredentialsGoOnlyWhereTheyBelong(t *testing.T) {
	for _, c := range []struct{ name, block string }{
		{"cache off", domainBlock},
		{"cache on", cachedBlock("")},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{RecordRequests: true})
			up.SetPrivate("team/secret", "alice", "s3cret-pass")
			img := up.PushRandomImage(t, "team/secret", "v1", 2, 64<<10)
			e := startProxy(t, up, c.block)
			const cookie, clientSecret, agent = "session=cookie-value", "client-secret-value", "client-agent/1.0"
			extra := http.Header{"Cookie": {cookie}, "X-Client-Secret": {clientSecret}}

			// A real client logs in and pulls...
			opts := []remote.Option{
				remote.WithTransport(headerTransport{base: e.transport, header: extra}),
				remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret-pass"}),
				remote.WithUserAgent(agent),
			}
			got, err := remote.Image(e.ref("docker.example.test", "team/secret:v1"), opts...)
			if err == nil {
				err = testupstream.SameImage(got, img)
			}
			if err != nil {
				t.Fatalf("logged-in pull: %v", err)
			}
			// ...and asks for a range of a blob, with its proxy token.
			h := http.Header{"Authorization": {"Bearer " + loginToken(t, e, "alice", "s3cret-pass", "team/secret")},
				"Range": {"bytes=10-99"}, "User-Agent": {agent}}
			for k, v := range extra {
				h[k] = v
			}
			layers := layerDigests(t, img)
			resp, body := e.do("GET", "docker.example.test", "/v2/team/secret/blobs/"+layers[1].String(), h)
			if resp.StatusCode != http.StatusPartialContent || len(body) != 90 {
				t.Fatalf("ranged blob = %d, %d bytes", resp.StatusCode, len(body))
			}

			basic := base64.StdEncoding.EncodeToString([]byte("alice:s3cret-pass"))
			// dp1. starts the proxy's own tokens, which never leave it.
			secrets := []string{"s3cret-pass", basic, "cookie-value", clientSecret, "dp1."}
			// The client's User-Agent goes to the registry after the
			// proxy's (registries count clients by it), nowhere else.
			clientAgent := []string{agent, "go-containerregistry"}
			leaked := func(r testupstream.Recorded, values []string) []string {
				var found []string
				for _, s := range values {
					if strings.Contains(r.URI, s) {
						found = append(found, s+" in the URI")
					}
					for k, vs := range r.Header {
						for _, v := range vs {
							if strings.Contains(v, s) {
								found = append(found, s+" in "+k)
							}
						}
					}
				}
				return found
			}

			objects := up.Requests(testupstream.ObjectStoreListener)
			if len(objects) == 0 {
				t.Fatal("no request reached the object store")
			}
			ranged := false
			for _, r := range objects {
				for k := range r.Header {
					switch k {
					case "Range":
						ranged = ranged || r.Header.Get("Range") == "bytes=10-99"
					case "User-Agent", "Accept-Encoding": // the proxy's own
					default:
						t.Errorf("the object store got %s: %q", k, r.Header.Values(k))
					}
				}
				if found := leaked(r, append(secrets, clientAgent...)); len(found) > 0 {
					t.Errorf("the object store got %v", found)
				}
			}
			// The cache fetches whole blobs and serves ranges itself.
			if c.name == "cache off" && !ranged {
				t.Error("the client's Range did not reach the object store")
			}

			for _, r := range up.Requests(testupstream.RegistryListener) {
				for _, k := range []string{"Cookie", "X-Client-Secret"} {
					if r.Header.Get(k) != "" {
						t.Errorf("%s %s: the registry got the client's %s", r.Method, r.URI, k)
					}
				}
				if found := leaked(r, secrets); len(found) > 0 {
					t.Errorf("%s %s: the registry got %v", r.Method, r.URI, found)
				}
			}

			realm := up.Requests(testupstream.RealmListener)
			loggedIn := false
			for _, r := range realm {
				loggedIn = loggedIn || r.Header.Get("Authorization") == "Basic "+basic
				if found := leaked(r, []string{"cookie-value", clientSecret, "dp1."}); len(found) > 0 {
					t.Errorf("the realm got %v", found)
				}
			}
			if !loggedIn {
				t.Errorf("the client's credentials never reached the realm (%d requests)", len(realm))
			}
		})
	}
}

// loginToken gets a token for a logged-in client from the proxy.
func loginToken(t *testing.T, e *proxyEnv, user, pass, repo string) string {
	t.Helper()
	return loginTokenOn(t, e, "docker.example.test", user, pass, repo)
}

// loginTokenOn is loginToken on another host of the proxy.
func loginTokenOn(t *testing.T, e *proxyEnv, host, user, pass, repo string) string {
	t.Helper()
	h := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}}
	resp, body := e.do("GET", host, "/v2/auth?scope=repository:"+repo+":pull", h)
	var tr struct{ Token string }
	if err := json.Unmarshal([]byte(body), &tr); err != nil || resp.StatusCode != 200 || tr.Token == "" {
		t.Fatalf("login token: %d %s", resp.StatusCode, body)
	}
	return tr.Token
}

// TestHopByHopResponseHeadersStayUpstream: headers that belong to the
// upstream's connection (Connection and the ones it names, Keep-Alive,
// Proxy-Authenticate, ...) never reach the client, from the registry or
// from the blob redirect target.
func TestHopByHopResponseHeadersStayUpstream(t *testing.T) {
	hop := http.Header{
		"Connection":         {"X-Foo, X-Bar"},
		"X-Foo":              {"1"},
		"X-Bar":              {"2"},
		"Keep-Alive":         {"timeout=5, max=100"},
		"Proxy-Authenticate": {`Basic realm="upstream-proxy"`},
		"Proxy-Connection":   {"keep-alive"},
		"Upgrade":            {"h2c"},
	}
	for _, c := range []struct{ name, block string }{
		{"cache off", domainBlock},
		{"cache on", cachedBlock("")},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{})
			img := up.PushRandomImage(t, "team/app", "1", 1, 4096)
			up.AddResponseHeaders(testupstream.RegistryListener, hop)
			up.AddResponseHeaders(testupstream.ObjectStoreListener, hop)
			// The upstream does send them, or this test proves nothing.
			resp, err := http.Get(up.URL + "/v2/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			for k := range hop {
				if resp.Header.Get(k) == "" {
					t.Fatalf("the upstream does not send %s: %v", k, resp.Header)
				}
			}

			e := startProxy(t, up, c.block)
			tok := anonymousToken(t, e, "docker.example.test", "team/app")
			d, _ := img.Digest()
			paths := []string{"/v2/team/app/manifests/1", "/v2/team/app/manifests/" + d.String(), "/v2/team/app/tags/list"}
			for _, l := range layerDigests(t, img) {
				paths = append(paths, "/v2/team/app/blobs/"+l.String())
			}
			accept := http.Header{"Accept": {"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"}}
			for _, path := range paths {
				for _, method := range []string{"HEAD", "GET"} {
					resp, _ := e.get(method, path, tok, accept)
					if resp.StatusCode != http.StatusOK {
						t.Errorf("%s %s = %d", method, path, resp.StatusCode)
					}
					for k := range hop {
						if v := resp.Header.Values(k); len(v) > 0 {
							t.Errorf("%s %s: the client got %s: %q", method, path, k, v)
						}
					}
				}
			}
		})
	}
}

// TestManifestPassThroughHeaders: with the cache off, manifests come from
// the upstream with the headers clients check (type, digest, length), an
// OCI manifest as such, and a HEAD stays a HEAD, which Docker Hub does not
// count against the pull limit.
func TestManifestPassThroughHeaders(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	docker := up.PushRandomImage(t, "team/app", "docker", 1, 2048)
	oci := mutate.MediaType(docker, types.OCIManifestSchema1)
	oci = mutate.ConfigMediaType(oci, types.OCIConfigJSON)
	up.PushImage(t, "team/app", "oci", oci)
	e := startProxy(t, up, domainBlock)
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	accept := http.Header{"Accept": {string(types.OCIManifestSchema1) + ", " + string(types.DockerManifestSchema2)}}

	for _, c := range []struct {
		ref       string
		img       v1.Image
		mediaType types.MediaType
	}{
		{"oci", oci, types.OCIManifestSchema1},
		{"docker", docker, types.DockerManifestSchema2},
	} {
		raw, _ := c.img.RawManifest()
		d, _ := c.img.Digest()
		for _, ref := range []string{c.ref, d.String()} {
			path := "/v2/team/app/manifests/" + ref
			gets, heads := up.Counters.ManifestGETs(), up.Counters.ManifestHEADs()
			resp, body := e.get("HEAD", path, tok, accept)
			if n := up.Counters.ManifestGETs() - gets; n != 0 || up.Counters.ManifestHEADs()-heads != 1 {
				t.Errorf("HEAD %s made %d manifest GETs and %d HEADs upstream, want 0 and 1", ref, n, up.Counters.ManifestHEADs()-heads)
			}
			checkManifestHeaders(t, "HEAD "+ref, resp, c.mediaType, d.String(), len(raw))
			if body != "" {
				t.Errorf("HEAD %s has a body", ref)
			}
			resp, body = e.get("GET", path, tok, accept)
			checkManifestHeaders(t, "GET "+ref, resp, c.mediaType, d.String(), len(raw))
			if body != string(raw) {
				t.Errorf("GET %s: the body is not the upstream's manifest", ref)
			}
		}
	}
}

func checkManifestHeaders(t *testing.T, what string, resp *http.Response, mediaType types.MediaType, digest string, size int) {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("%s = %d", what, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != string(mediaType) {
		t.Errorf("%s: Content-Type %q, want %s", what, ct, mediaType)
	}
	if dcd := resp.Header.Get("Docker-Content-Digest"); dcd != digest {
		t.Errorf("%s: Docker-Content-Digest %q, want %s", what, dcd, digest)
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(size) {
		t.Errorf("%s: Content-Length %q, want %d", what, cl, size)
	}
}

func TestRangeAndTagsPagination(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 10000)
	for _, tag := range []string{"2", "3", "4"} {
		up.PushImage(t, "team/app", tag, img)
	}
	e := startProxy(t, up, domainBlock)
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	auth := http.Header{"Authorization": {"Bearer " + tok}}

	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	all, _ := io.ReadAll(rc)
	h := auth.Clone()
	h.Set("Range", "bytes=100-199")
	resp, body := e.do("GET", "docker.example.test", "/v2/team/app/blobs/"+ld.String(), h)
	if resp.StatusCode != http.StatusPartialContent || body != string(all[100:200]) {
		t.Errorf("Range = %d, %d bytes", resp.StatusCode, len(body))
	}

	resp, body = e.do("GET", "docker.example.test", "/v2/team/app/tags/list?n=2", auth)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"1"`) || !strings.Contains(body, `"2"`) || strings.Contains(body, `"3"`) {
		t.Fatalf("tags page 1 = %d %s", resp.StatusCode, body)
	}
	link := resp.Header.Get("Link")
	if !strings.HasPrefix(link, "</v2/team/app/tags/list?") || !strings.Contains(link, `rel="next"`) {
		t.Fatalf("Link = %q", link)
	}
	next := link[1:strings.IndexByte(link, '>')]
	resp, body = e.do("GET", "docker.example.test", next, auth)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"3"`) {
		t.Errorf("tags page 2 = %d %s", resp.StatusCode, body)
	}
}

// anonymousToken gets a token from the proxy's endpoint, as clients do.
func anonymousToken(t *testing.T, e *proxyEnv, host, repo string) string {
	t.Helper()
	resp, body := e.do("GET", host, "/v2/auth?scope=repository:"+repo+":pull", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("token: %d %s", resp.StatusCode, body)
	}
	var tr struct{ Token string }
	_ = json.Unmarshal([]byte(body), &tr)
	return tr.Token
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

// TestBodyFailureAbortsClientConnection: an upstream blob body that breaks
// off reaches the client as a broken response, never as a clean short one.
// The upstream sends it chunked, without Content-Length, so nothing but the
// proxy's own abort can tell the client (a response with a length that
// falls short is broken off by net/http anyway).
func TestBodyFailureAbortsClientConnection(t *testing.T) {
	for _, c := range []struct{ name, block string }{
		{"cache off", domainBlock},
		{"cache on", cachedBlock("")},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{})
			img := up.PushRandomImage(t, "team/app", "1", 1, 1<<20)
			e := startProxy(t, up, c.block)
			layers, _ := img.Layers()
			ld, _ := layers[0].Digest()
			tok := anonymousToken(t, e, "docker.example.test", "team/app")
			up.Faults.ChunkBlobs(true)
			up.Faults.CutBlobsAfter(300 << 10)
			req, _ := http.NewRequest("GET", e.url("docker.example.test", "/v2/team/app/blobs/"+ld.String()), nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := (&http.Client{Transport: e.transport}).Do(req)
			if err == nil {
				// Headers went out before the cut: the body must fail.
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("status %d, want 200 (the upstream's) or no response at all", resp.StatusCode)
				}
				if c.name == "cache off" && resp.ContentLength != -1 {
					t.Errorf("length %d: want none, as the upstream sent it", resp.ContentLength)
				}
				if err == nil {
					t.Errorf("a cut blob ended cleanly after %d bytes", n)
				}
			}
			// else: the cut came before any byte reached the client, whose
			// connection was closed without a response: also never clean.
			if up.Counters.ObjectStoreGETs() != 1 {
				t.Errorf("%d object store GETs, want 1", up.Counters.ObjectStoreGETs())
			}
		})
	}
}

func isStatus(err error, status int) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == status
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

func TestLoggedInTokenIsBoundToItsUpstream(t *testing.T) {
	hub := testupstream.Start(t, testupstream.Options{})
	ghcr := testupstream.Start(t, testupstream.Options{})
	hub.SetPrivate("team/secret", "alice", "pw")
	ghcr.PushRandomImage(t, "team/secret", "1", 1, 1024)
	ghcr.SetPrivate("team/secret", "alice", "pw")
	e := startProxy(t, hub, strings.Replace(`http://:{PORT} {
	docker_proxy {
		domain example.test
		upstream docker.io {UPSTREAM}
		upstream ghcr.io GHCR
		cache off
	}
}`, "GHCR", ghcr.URL, 1))
	req, _ := http.NewRequest("GET", e.url("docker.example.test", "/v2/auth?scope=repository:team/secret:pull"), nil)
	req.SetBasicAuth("alice", "pw")
	resp, err := (&http.Client{Transport: e.transport}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tr struct{ Token string }
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	if resp.StatusCode != 200 || tr.Token == "" {
		t.Fatalf("login token: %d", resp.StatusCode)
	}
	// Alice's Docker Hub token must not be sent to ghcr: the grant is
	// refused on the ghcr route.
	before := ghcr.Counters.RegistryRequests()
	r2, _ := e.do("GET", "ghcr.example.test", "/v2/team/secret/manifests/1", http.Header{"Authorization": {"Bearer " + tr.Token}})
	if r2.StatusCode != 401 || !strings.Contains(r2.Header.Get("Www-Authenticate"), "invalid_token") {
		t.Errorf("docker.io login token on the ghcr route = %d %s", r2.StatusCode, r2.Header.Get("Www-Authenticate"))
	}
	if n := ghcr.Counters.RegistryRequests() - before; n != 0 {
		t.Errorf("the refused token still reached ghcr %d times", n)
	}
}

func TestReferrersPassThrough(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 1024)
	subject, _ := img.Digest()
	// An artifact (e.g. a signature) whose subject is the image.
	sig := up.PushRandomImage(t, "team/app", "", 1, 512)
	sigManifest, _ := sig.Manifest()
	sigManifest.Subject = &v1.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: subject, Size: mustSize(t, img)}
	sigManifest.MediaType = "application/vnd.oci.image.manifest.v1+json"
	sigManifest.Config.MediaType = "application/vnd.example.signature"
	raw, _ := json.Marshal(sigManifest)
	if err := up.PutRawManifest("team/app", "sig", "application/vnd.oci.image.manifest.v1+json", raw); err != nil {
		t.Fatal(err)
	}
	e := startProxy(t, up, domainBlock)
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	resp, body := e.do("GET", "docker.example.test", "/v2/team/app/referrers/"+subject.String(), http.Header{"Authorization": {"Bearer " + tok}})
	if resp.StatusCode != 200 || !strings.Contains(body, "application/vnd.example.signature") {
		t.Fatalf("referrers = %d %s", resp.StatusCode, body)
	}
	if up.Counters.ReferrersRequests() != 1 {
		t.Errorf("%d referrers requests upstream, want 1", up.Counters.ReferrersRequests())
	}
}

func mustSize(t *testing.T, img v1.Image) int64 {
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(raw))
}
