package dockerproxy_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// Proxy accounts (users) and repository rules (allow, deny), through
// Caddy, with a real registry client.

// Hashes as caddy hash-password prints them (cheap parameters, for
// tests): alice-pass in bcrypt, bob-pass in argon2id.
const (
	aliceHash = "$2a$04$IaJTF31jKLEhhA6REkeb1OXlwCM3kjxjr0vl6fTmiujJnwn1mNuX6"
	bobHash   = "$argon2id$v=19$m=1024,t=1,p=1$elJPxupo7A3e2K5BtBBpyQ$EMwgpvug3lLKSjyi5Fq1U4GJwTcIIZL+7i0+J76+yWI"
)

func basicHeader(user, pass string) http.Header {
	return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}}
}

// registryErrorCode is the code of the first error of a registry error
// body.
func registryErrorCode(body string) string {
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if json.Unmarshal([]byte(body), &e) != nil || len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Code
}

const privateBlock = `http://docker.example.test:{PORT} {
	log {
		output file {DIR}/access.log
	}
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		auth_key 0123456789abcdef0123456789abcdef
		users {
			alice ` + aliceHash + `
			bob ` + bobHash + `
		}
		deny docker.io team/hidden
		cache {DIR}/cache
	}
}

# Same key, alice with another password.
http://ghcr.example.test:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		auth_key 0123456789abcdef0123456789abcdef
		users {
			alice ` + bobHash + `
		}
		cache off
	}
}

# Same key, public.
http://quay.example.test:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		auth_key 0123456789abcdef0123456789abcdef
		cache off
	}
}`

func TestAccountsGateEveryRequest(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{Service: "registry.docker.io"})
	img := up.PushRandomImage(t, "team/app", "v1", 2, 4096)
	up.PushRandomImage(t, "team/hidden", "v1", 1, 1024)
	e := startProxy(t, up, privateBlock)
	ref := e.ref("docker.example.test", "team/app:v1")

	// Anonymous and wrong passwords: 401, and the upstream hears of none
	// of it.
	up.Counters.Reset()
	if err := e.pullImage(ref, nil, img); !isStatus(err, http.StatusUnauthorized) {
		t.Fatalf("anonymous pull: %v, want 401", err)
	}
	// Three failures from this address in all (the pull's and the two
	// below), which it gets free: alice's login later is not slowed down.
	if err := e.pullImage(ref, &authn.Basic{Username: "alice", Password: "bob-pass"}, img); !isStatus(err, http.StatusUnauthorized) {
		t.Fatalf("pull as alice with bob's password: %v, want 401", err)
	}
	wrongPass, body1 := e.do("GET", "docker.example.test", "/v2/auth?scope=repository:team/app:pull", basicHeader("alice", "nope"))
	unknownUser, body2 := e.do("GET", "docker.example.test", "/v2/auth?scope=repository:team/app:pull", basicHeader("mallory", "nope"))
	if wrongPass.StatusCode != 401 || unknownUser.StatusCode != 401 || body1 != body2 || registryErrorCode(body1) != "UNAUTHORIZED" {
		t.Errorf("wrong password: %d %s; unknown user: %d %s; want the same 401 UNAUTHORIZED", wrongPass.StatusCode, body1, unknownUser.StatusCode, body2)
	}
	for _, path := range []string{"/v2/", "/v2/team/app/manifests/v1", "/v2/team/app/tags/list", "/v2/auth?scope=repository:team/app:pull"} {
		resp, body := e.do("GET", "docker.example.test", path, nil)
		if resp.StatusCode != 401 || registryErrorCode(body) != "UNAUTHORIZED" {
			t.Errorf("anonymous GET %s = %d %s, want 401 UNAUTHORIZED", path, resp.StatusCode, body)
		}
	}
	if n := up.Counters.RegistryRequests() + up.Counters.RealmRequests(); n != 0 {
		t.Errorf("refused clients cost the upstream %d requests, want none", n)
	}

	// The accounts log in (bcrypt and argon2id) and pull.
	if err := e.pullImage(ref, &authn.Basic{Username: "alice", Password: "alice-pass"}, img); err != nil {
		t.Fatalf("pull as alice: %v", err)
	}
	if err := e.pullImage(ref, &authn.Basic{Username: "bob", Password: "bob-pass"}, img); err != nil {
		t.Fatalf("pull as bob: %v", err)
	}
	// The access log names the account of each request.
	waitUntil(t, "the access log to name alice and bob", func() bool {
		b, _ := os.ReadFile(filepath.Join(e.dataDirParent(), "access.log"))
		var alice, bob bool
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "/v2/team/app/manifests/v1") {
				alice = alice || strings.Contains(line, `"user_id":"alice"`)
				bob = bob || strings.Contains(line, `"user_id":"bob"`)
			}
		}
		return alice && bob
	})

	// An account's token serves only where the account is the same: not
	// on a site where alice has another password, though the key is
	// shared; a public site's token is no account's.
	token := loginToken(t, e, "alice", "alice-pass", "team/app")
	resp, _ := e.get("GET", "/v2/team/app/manifests/v1", token, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("alice's token: %d", resp.StatusCode)
	}
	resp, body := e.do("GET", "ghcr.example.test", "/v2/team/app/manifests/v1", http.Header{"Authorization": {"Bearer " + token}})
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("Www-Authenticate"), `error="invalid_token"`) {
		t.Errorf("alice's token where alice has another password = %d %s, want 401 invalid_token", resp.StatusCode, body)
	}
	public := anonymousToken(t, e, "quay.example.test", "team/app")
	resp, body = e.get("GET", "/v2/team/app/manifests/v1", public, nil)
	if resp.StatusCode != 401 {
		t.Errorf("a public site's token on the private site = %d %s, want 401", resp.StatusCode, body)
	}

	// Rules apply to the logged-in, and the anonymous learn nothing of them.
	resp, body = e.get("GET", "/v2/team/hidden/manifests/v1", token, nil)
	if resp.StatusCode != 403 || registryErrorCode(body) != "DENIED" {
		t.Errorf("alice, denied repository = %d %s, want 403 DENIED", resp.StatusCode, body)
	}
	resp, _ = e.do("GET", "docker.example.test", "/v2/team/hidden/manifests/v1", nil)
	if resp.StatusCode != 401 {
		t.Errorf("anonymous, denied repository = %d, want 401", resp.StatusCode)
	}
}

// In accounts mode the upstream sees the configured credentials, never
// the account's: a private upstream image is served to accounts only
// through the configured credentials.
func TestAccountsUseConfiguredCredentialsUpstream(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{Service: "registry.docker.io"})
	up.SetPrivate("team/secret", "hubuser", "hub-secret")
	img := up.PushRandomImage(t, "team/secret", "v1", 1, 4096)
	alice := &authn.Basic{Username: "alice", Password: "alice-pass"}

	withCreds := startProxy(t, up, `http://:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		credentials hubuser hub-secret
		users {
			alice `+aliceHash+`
		}
		cache off
	}
}`)
	if err := withCreds.pullImage(withCreds.ref("docker.example.test", "team/secret:v1"), alice, img); err != nil {
		t.Fatalf("pull of a private image as alice, with configured credentials: %v", err)
	}
	// The upstream's own account is no account of the proxy.
	if err := withCreds.pullImage(withCreds.ref("docker.example.test", "team/secret:v1"), &authn.Basic{Username: "hubuser", Password: "hub-secret"}, img); !isStatus(err, 401) {
		t.Fatalf("pull with the upstream's credentials as a proxy login: %v, want 401", err)
	}

	without := startProxy(t, up, `http://:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		users {
			alice `+aliceHash+`
		}
		cache off
	}
}`)
	err := without.pullImage(without.ref("docker.example.test", "team/secret:v1"), alice, img)
	if !isStatus(err, 401) {
		t.Fatalf("pull of a private image as alice, without configured credentials: %v, want 401", err)
	}
}

const rulesBlock = `http://:{PORT} {
	docker_proxy {
		domain example.test
		upstream docker.io {UPSTREAM}
		upstream ghcr.io {UPSTREAM}
		route mirror.example.test docker.io
		allow docker.io library/* team/**
		deny docker.io team/secret* library/evil
		deny ghcr.io somebody/*
		cache {DIR}/cache
	}
}`

func TestRepositoryRules(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{Service: "registry.docker.io"})
	app := up.PushRandomImage(t, "team/app", "v1", 2, 4096)
	deep := up.PushRandomImage(t, "team/sub/app", "v1", 1, 1024)
	official := up.PushRandomImage(t, "library/alpine", "v1", 1, 1024)
	up.PushRandomImage(t, "other/app", "v1", 1, 1024)
	up.PushRandomImage(t, "team/secretive", "v1", 1, 1024)
	up.PushRandomImage(t, "library/evil", "v1", 1, 1024)
	up.PushRandomImage(t, "somebody/tool", "v1", 1, 1024)
	tool := up.PushRandomImage(t, "someone/tool", "v1", 1, 1024)
	e := startProxy(t, up, rulesBlock)

	// Allowed: pulled whole.
	if err := e.pullImage(e.ref("docker.example.test", "team/app:v1"), nil, app); err != nil {
		t.Fatalf("team/app: %v", err)
	}
	if err := e.pullImage(e.ref("docker.example.test", "team/sub/app:v1"), nil, deep); err != nil {
		t.Fatalf("team/sub/app (team/**): %v", err)
	}
	if err := e.pullImage(e.ref("docker.example.test", "alpine:v1"), nil, official); err != nil {
		t.Fatalf("alpine (library/*): %v", err)
	}
	if err := e.pullImage(e.ref("ghcr.example.test", "someone/tool:v1"), nil, tool); err != nil {
		t.Fatalf("ghcr someone/tool: %v", err)
	}
	cachedLayer := layerDigests(t, app)[0].String()

	// Refused: every routing form, every request kind; the message
	// names the rule; the upstream hears nothing.
	type refusal struct {
		host, path, rule string
	}
	var cases []refusal
	forms := func(host, prefix, suffix, name, rule string) {
		for _, kind := range []string{"/manifests/v1", "/manifests/" + cachedLayer, "/blobs/" + cachedLayer, "/tags/list", "/referrers/" + cachedLayer} {
			cases = append(cases, refusal{host, prefix + name + kind + suffix, rule})
		}
		cases = append(cases, refusal{host, prefix + "auth?scope=repository:" + name + ":pull" + strings.ReplaceAll(suffix, "?", "&"), rule})
	}
	const denyHub = "'deny docker.io team/secret* library/evil'"
	const allowHub = "'allow docker.io library/* team/**'"
	const denyGhcr = "'deny ghcr.io somebody/*'"
	forms("docker.example.test", "/v2/", "", "other/app", allowHub)
	forms("docker.example.test", "/v2/", "", "team/secretive", denyHub)
	forms("ghcr.example.test", "/v2/", "", "somebody/tool", denyGhcr)
	forms("mirror.example.test", "/v2/", "?ns=ghcr.io", "somebody/tool", denyGhcr)
	forms("mirror.example.test", "/v2/", "?ns=docker.io", "other/app", allowHub)
	forms("docker.example.test", "/v2/ghcr.io/", "", "somebody/tool", denyGhcr)
	forms("ghcr.example.test", "/v2/docker.io/", "", "team/secretive", denyHub)
	// Docker Hub's official images: the scope of a one-component name is
	// checked as library/<name>.
	cases = append(cases, refusal{"docker.example.test", "/v2/auth?scope=repository:evil:pull", denyHub},
		refusal{"docker.example.test", "/v2/auth?scope=repository:team/app:pull&scope=repository:other/app:pull", allowHub},
		refusal{"docker.example.test", "/v2/library/evil/manifests/v1", denyHub})

	up.Counters.Reset()
	for _, c := range cases {
		resp, body := e.do("GET", c.host, c.path, nil)
		if resp.StatusCode != 403 || registryErrorCode(body) != "DENIED" || !strings.Contains(body, c.rule) {
			t.Errorf("GET %s%s = %d %s, want 403 DENIED naming %s", c.host, c.path, resp.StatusCode, body, c.rule)
		}
	}
	if n := up.Counters.RegistryRequests() + up.Counters.RealmRequests(); n != 0 {
		t.Errorf("refused requests cost the upstream %d requests, want none", n)
	}

	// A registry client reads the refusal.
	_, err := remote.Image(e.ref("docker.example.test", "other/app:v1"), e.remoteOptions(nil)...)
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != 403 || len(te.Errors) == 0 || te.Errors[0].Code != transport.DeniedErrorCode {
		t.Errorf("crane-like pull of other/app: %v, want 403 DENIED", err)
	}
}

// The network gate as the README writes it: Caddy's client_ip matcher and
// abort in front of the handler. A client from a listed address pulls; one
// from elsewhere gets no HTTP answer at all.
func TestNetworkGateWithClientIP(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{Service: "registry.docker.io"})
	img := up.PushRandomImage(t, "team/app", "v1", 1, 1024)
	e := startProxy(t, up, `http://:{PORT} {
	@outside not client_ip 127.0.0.2/32
	abort @outside
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		cache off
	}
}`)
	ref := e.ref("docker.example.test", "team/app:v1")
	up.Counters.Reset()
	_, err := remote.Image(ref, e.remoteOptions(nil)...)
	if err == nil {
		t.Fatal("a client from 127.0.0.1 pulled through a site open to 127.0.0.2 only")
	}
	var te *transport.Error
	if errors.As(err, &te) {
		t.Fatalf("a client from 127.0.0.1 got an HTTP answer (%v), want the connection closed", err)
	}
	if n := up.Counters.RegistryRequests(); n != 0 {
		t.Errorf("the refused client cost the upstream %d requests", n)
	}

	inside := e.transport.Clone()
	inside.DialContext = (&netDialer{local: "127.0.0.2"}).dialTo("127.0.0.1:" + e.port)
	got, err := remote.Image(ref, remote.WithTransport(inside))
	if err != nil {
		t.Fatalf("a client from 127.0.0.2: %v", err)
	}
	if err := testupstream.SameImage(got, img); err != nil {
		t.Fatal(err)
	}
}

// Repeated wrong passwords from one address are slowed down: 429
// TOOMANYREQUESTS with Retry-After, without a hash check. A password
// verified before still logs in from there, and other addresses are not
// slowed.
func TestAccountsSlowDownRepeatedFailures(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{Service: "registry.docker.io"})
	e := startProxy(t, up, `http://:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		users {
			alice `+aliceHash+`
		}
		cache off
	}
}`)
	const auth = "/v2/auth?scope=repository:team/app:pull"
	if resp, body := e.do("GET", "docker.example.test", auth, basicHeader("alice", "alice-pass")); resp.StatusCode != 200 {
		t.Fatalf("alice: %d %s", resp.StatusCode, body)
	}
	// The wait after a failure doubles, so a 429 comes within a few
	// tries however slow the machine.
	var slowed *http.Response
	var body string
	for i := 0; i < 12 && slowed == nil; i++ {
		resp, b := e.do("GET", "docker.example.test", auth, basicHeader("alice", fmt.Sprintf("guess-%d", i)))
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			if i >= 12-1 {
				t.Fatalf("12 wrong passwords in a row, all answered 401")
			}
		case http.StatusTooManyRequests:
			slowed, body = resp, b
		default:
			t.Fatalf("wrong password %d: %d %s", i, resp.StatusCode, b)
		}
	}
	if slowed == nil {
		t.Fatal("never slowed down")
	}
	if registryErrorCode(body) != "TOOMANYREQUESTS" || slowed.Header.Get("Retry-After") == "" {
		t.Errorf("slowed down: %s, Retry-After %q; want TOOMANYREQUESTS and Retry-After", body, slowed.Header.Get("Retry-After"))
	}
	if resp, body := e.do("GET", "docker.example.test", auth, basicHeader("alice", "alice-pass")); resp.StatusCode != 200 {
		t.Errorf("alice's verified password from the slowed address: %d %s", resp.StatusCode, body)
	}
	other := e.transport.Clone()
	other.DialContext = (&netDialer{local: "127.0.0.3"}).dialTo("127.0.0.1:" + e.port)
	req, _ := http.NewRequest("GET", e.url("docker.example.test", auth), nil)
	req.SetBasicAuth("alice", "guess-other")
	resp, err := (&http.Client{Transport: other}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a wrong password from another address: %d, want 401 (not slowed down)", resp.StatusCode)
	}
}

// A private site lists its routes to no one: a host it does not route
// gets a registry error, not the route table with its upstreams'
// addresses, which a public site shows there.
func TestPrivateSiteListsNoRoutes(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	for _, private := range []bool{false, true} {
		users := ""
		if private {
			users = "users {\n\t\t\talice " + aliceHash + "\n\t\t}"
		}
		e := startProxy(t, up, `http://:{PORT} {
	docker_proxy {
		domain example.test
		upstream docker.io {UPSTREAM}
		`+users+`
		cache off
	}
}`)
		before := up.Counters.RegistryRequests()
		resp, body := e.do("GET", "unknown.example.test", "/v2/", nil)
		listed := strings.Contains(body, "routes") || strings.Contains(body, up.URL)
		if resp.StatusCode != http.StatusNotFound || listed == private {
			t.Errorf("private %v: unrouted host: %d %s", private, resp.StatusCode, body)
		}
		if private && registryErrorCode(body) != "NAME_UNKNOWN" {
			t.Errorf("private site, unrouted host: %s", body)
		}
		if n := up.Counters.RegistryRequests() - before; n != 0 {
			t.Errorf("private %v: %d upstream requests", private, n)
		}
	}
}
