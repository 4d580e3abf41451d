package dockerproxy_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

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
