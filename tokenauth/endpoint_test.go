package tokenauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const hubID = "https://registry-1.docker.io"

type endpointFixture struct {
	ts *tokenServer
	e  *Endpoint
}

func newEndpointFixture(t *testing.T) *endpointFixture {
	t.Helper()
	ts := newTokenServer(t)
	return &endpointFixture{
		ts: ts,
		e:  &Endpoint{Sealer: mustSealer(t, testKey), Fetcher: &Fetcher{Client: ts.Client()}},
	}
}

// bearerUpstream is Docker Hub as the proxy sees it: a Bearer challenge
// pointing at the test token service, and the library/ rule.
func (fx *endpointFixture) bearerUpstream() Upstream {
	c := fx.ts.challenge("registry.docker.io")
	return Upstream{ID: hubID, Challenge: &c, NormalizeScope: libraryScope}
}

func libraryScope(s Scope) Scope {
	if strings.HasPrefix(s.Type, "repository") && !strings.Contains(s.Name, "/") {
		s.Name = "library/" + s.Name
	}
	return s
}

type tokenAnswer struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (a tokenAnswer) errorCode() string {
	s, _ := a.body["error"].(string)
	return s
}

func serveToken(e *Endpoint, up Upstream, r *http.Request) tokenAnswer {
	rec := httptest.NewRecorder()
	if treq, rerr := ParseRequest(r); rerr != nil {
		rerr.Write(rec)
	} else {
		e.Serve(rec, r, treq, up)
	}
	a := tokenAnswer{status: rec.Code, header: rec.Header(), raw: rec.Body.String()}
	_ = json.Unmarshal(rec.Body.Bytes(), &a.body)
	return a
}

// grantOf opens the token of a 200 answer.
func (fx *endpointFixture) grantOf(t *testing.T, a tokenAnswer) Grant {
	t.Helper()
	if a.status != http.StatusOK {
		t.Fatalf("status %d: %s", a.status, a.raw)
	}
	tok, _ := a.body["token"].(string)
	if tok == "" || a.body["access_token"] != tok {
		t.Fatalf("answer %s: want token and access_token, equal", a.raw)
	}
	if a.header.Get("Content-Type") != "application/json" || a.header.Get("Cache-Control") != "no-store" {
		t.Errorf("headers %v", a.header)
	}
	if _, err := time.Parse(time.RFC3339, fmt.Sprint(a.body["issued_at"])); err != nil {
		t.Errorf("issued_at %v: %v", a.body["issued_at"], err)
	}
	g, err := fx.e.Sealer.Open(tok, time.Now())
	if err != nil {
		t.Fatalf("the issued token does not open: %v", err)
	}
	return g
}

func getToken(query string) *http.Request {
	return httptest.NewRequest(http.MethodGet, "/v2/auth?"+query, nil)
}

func withBasic(r *http.Request, user, pass string) *http.Request {
	r.SetBasicAuth(user, pass)
	return r
}

func postToken(form url.Values) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/v2/auth", strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return r
}

func TestEndpointAnonymous(t *testing.T) {
	fx := newEndpointFixture(t)
	a := serveToken(fx.e, fx.bearerUpstream(), getToken("service=registry.docker.io&scope=repository:library/alpine:pull"))
	g := fx.grantOf(t, a)
	if !g.Anonymous() || g.Upstream != hubID || !slices.Equal(g.Scopes, []string{"repository:library/alpine:pull"}) {
		t.Errorf("grant %+v", g)
	}
	if a.body["expires_in"] != float64(3600) {
		t.Errorf("expires_in %v, want 3600 (the default lifetime)", a.body["expires_in"])
	}
	if a.body["scope"] != "repository:library/alpine:pull" {
		t.Errorf("scope %v", a.body["scope"])
	}
	if n := fx.ts.requests.Load(); n != 0 {
		t.Errorf("an anonymous token request made %d upstream token requests", n)
	}

	// No scope at all (docker login's first request).
	g = fx.grantOf(t, serveToken(fx.e, fx.bearerUpstream(), getToken("service=registry.docker.io")))
	if !g.Anonymous() || len(g.Scopes) != 0 {
		t.Errorf("grant %+v", g)
	}

	// HEAD is answered like GET.
	fx.grantOf(t, serveToken(fx.e, fx.bearerUpstream(), httptest.NewRequest(http.MethodHead, "/v2/auth", nil)))

	fx.e.AnonymousLifetime = 10 * time.Minute
	a = serveToken(fx.e, fx.bearerUpstream(), getToken(""))
	fx.grantOf(t, a)
	if a.body["expires_in"] != float64(600) {
		t.Errorf("expires_in %v, want 600", a.body["expires_in"])
	}
}

func TestEndpointBasicCredentials(t *testing.T) {
	fx := newEndpointFixture(t)
	r := withBasic(getToken("service=registry.docker.io&scope=repository:alice/private:pull"), "alice", "pa:ss")
	a := serveToken(fx.e, fx.bearerUpstream(), r)
	g := fx.grantOf(t, a)
	if g.Authorization != "Bearer tok-alice" || g.Upstream != hubID || !slices.Equal(g.Scopes, []string{"repository:alice/private:pull"}) {
		t.Errorf("grant %+v", g)
	}
	if strings.Contains(a.raw, "tok-alice") || strings.Contains(a.raw, "pa:ss") {
		t.Errorf("the answer shows the upstream token or the password: %s", a.raw)
	}
	if exp, _ := a.body["expires_in"].(float64); exp <= 0 || exp > 300 {
		t.Errorf("expires_in %v, want the upstream token's (300)", a.body["expires_in"])
	}
	up := fx.ts.last(t)
	if user, pass, ok := up.BasicAuth(); !ok || user != "alice" || pass != "pa:ss" {
		t.Errorf("the token service got %q %q %v", user, pass, ok)
	}
	q := up.URL.Query()
	if q.Get("service") != "registry.docker.io" || !slices.Equal(q["scope"], []string{"repository:alice/private:pull"}) || q.Get("account") != "alice" {
		t.Errorf("the token service got %v", q)
	}
}

func TestEndpointRefusedCredentials(t *testing.T) {
	fx := newEndpointFixture(t)
	fx.ts.setReply(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 401, map[string]any{"details": "incorrect username or password"})
	})
	a := serveToken(fx.e, fx.bearerUpstream(), withBasic(getToken("scope=repository:a/b:pull"), "alice", "wrong"))
	if a.status != http.StatusUnauthorized || a.errorCode() != "invalid_grant" {
		t.Errorf("answer %d %s, want 401 invalid_grant", a.status, a.raw)
	}
	if a.header.Get("Content-Type") != "application/json" {
		t.Errorf("Content-Type %q", a.header.Get("Content-Type"))
	}
	errs, _ := a.body["errors"].([]any)
	if len(errs) != 1 || errs[0].(map[string]any)["code"] != "UNAUTHORIZED" {
		t.Errorf("registry errors %v", a.body["errors"])
	}
	if strings.Contains(a.raw, "wrong") {
		t.Errorf("the answer shows the password: %s", a.raw)
	}
}

func TestEndpointTokenServiceFails(t *testing.T) {
	fx := newEndpointFixture(t)
	fx.ts.setReply(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	a := serveToken(fx.e, fx.bearerUpstream(), withBasic(getToken(""), "alice", "pw"))
	if a.status != http.StatusServiceUnavailable || a.errorCode() != "temporarily_unavailable" {
		t.Errorf("answer %d %s, want 503 temporarily_unavailable", a.status, a.raw)
	}
}

// TestEndpointOfflineKnownCredentials: while the token service fails,
// credentials it accepted lately get a token without upstream credentials
// but with their subject; others, and wrong passwords, get none.
func TestEndpointOfflineKnownCredentials(t *testing.T) {
	fx := newEndpointFixture(t)
	online := serveToken(fx.e, fx.bearerUpstream(), withBasic(getToken("scope=repository:team/secret:pull"), "carol", "pw"))
	if online.status != http.StatusOK {
		t.Fatalf("online login: %d %s", online.status, online.raw)
	}
	fx.ts.setReply(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	fx.e.Fetcher.cache = nil // force the token service to be asked
	a := serveToken(fx.e, fx.bearerUpstream(), withBasic(getToken("scope=repository:team/secret:pull"), "carol", "pw"))
	if a.status != http.StatusOK {
		t.Fatalf("offline, known credentials: %d %s", a.status, a.raw)
	}
	req := httptest.NewRequest(http.MethodGet, "/v2/team/secret/manifests/1", nil)
	req.Header.Set("Authorization", "Bearer "+a.body["token"].(string))
	g, err := fx.e.Identify(req, hubID)
	if err != nil || !g.Anonymous() || g.Subject == "" || g.Subject != fx.e.Sealer.Subject(hubID, Credentials{"carol", "pw"}) {
		t.Errorf("offline grant %+v, %v", g, err)
	}
	for _, who := range [][2]string{{"carol", "wrong"}, {"dave", "pw"}} {
		a := serveToken(fx.e, fx.bearerUpstream(), withBasic(getToken("scope=repository:team/secret:pull"), who[0], who[1]))
		if a.status != http.StatusServiceUnavailable {
			t.Errorf("offline, unknown credentials %s: %d %s", who[0], a.status, a.raw)
		}
	}
}

func TestEndpointPasswordGrant(t *testing.T) {
	fx := newEndpointFixture(t)
	form := url.Values{
		"grant_type": {"password"},
		"username":   {"bob"},
		"password":   {"secret"},
		"service":    {"registry.docker.io"},
		"client_id":  {"containerd-client"},
		"scope":      {"repository:library/alpine:pull repository:bob/app:pull,push", "repository:library/busybox:pull"},
	}
	g := fx.grantOf(t, serveToken(fx.e, fx.bearerUpstream(), postToken(form)))
	want := []string{"repository:library/alpine:pull", "repository:bob/app:pull,push", "repository:library/busybox:pull"}
	if g.Authorization != "Bearer tok-bob" || !slices.Equal(g.Scopes, want) {
		t.Errorf("grant %+v", g)
	}
	up := fx.ts.last(t)
	if user, pass, ok := up.BasicAuth(); !ok || user != "bob" || pass != "secret" {
		t.Errorf("the token service got %q %q %v", user, pass, ok)
	}
	if got := up.URL.Query()["scope"]; !slices.Equal(got, want) {
		t.Errorf("the token service got scopes %v", got)
	}

	// No grant_type: anonymous.
	g = fx.grantOf(t, serveToken(fx.e, fx.bearerUpstream(), postToken(url.Values{"scope": {"repository:a/b:pull"}})))
	if !g.Anonymous() || !slices.Equal(g.Scopes, []string{"repository:a/b:pull"}) {
		t.Errorf("grant %+v", g)
	}

	for _, gt := range []string{"refresh_token", "client_credentials", "authorization_code", "Password"} {
		a := serveToken(fx.e, fx.bearerUpstream(), postToken(url.Values{"grant_type": {gt}, "username": {"bob"}, "password": {"x"}, "refresh_token": {"r"}}))
		if a.status != http.StatusBadRequest || a.errorCode() != "invalid_request" {
			t.Errorf("grant_type %s: %d %s, want 400 invalid_request", gt, a.status, a.raw)
		}
	}

	for _, user := range []string{"", "a\nb", "a\rb", "a\x00b", "a:b"} {
		a := serveToken(fx.e, fx.bearerUpstream(), postToken(url.Values{"grant_type": {"password"}, "username": {user}, "password": {"x"}}))
		if a.status != http.StatusBadRequest {
			t.Errorf("username %q: %d %s, want 400", user, a.status, a.raw)
		}
	}
}

func TestEndpointNormalizeScope(t *testing.T) {
	fx := newEndpointFixture(t)
	r := getToken("scope=" + url.QueryEscape("repository:alpine:pull") + "&scope=" + url.QueryEscape("repository:user/app:pull registry:catalog:*"))
	g := fx.grantOf(t, serveToken(fx.e, fx.bearerUpstream(), r))
	want := []string{"repository:library/alpine:pull", "repository:user/app:pull", "registry:catalog:*"}
	if !slices.Equal(g.Scopes, want) {
		t.Errorf("scopes %v, want %v", g.Scopes, want)
	}
	// With credentials the upstream is asked for the normalised scopes.
	fx.grantOf(t, serveToken(fx.e, fx.bearerUpstream(), withBasic(getToken("scope=repository:alpine:pull"), "alice", "pw")))
	if got := fx.ts.last(t).URL.Query()["scope"]; !slices.Equal(got, []string{"repository:library/alpine:pull"}) {
		t.Errorf("the token service got scopes %v", got)
	}
	// Without a normaliser names are kept.
	up := fx.bearerUpstream()
	up.NormalizeScope = nil
	g = fx.grantOf(t, serveToken(fx.e, up, getToken("scope=repository:alpine:pull")))
	if !slices.Equal(g.Scopes, []string{"repository:alpine:pull"}) {
		t.Errorf("scopes %v", g.Scopes)
	}
}

func TestEndpointScopeLimits(t *testing.T) {
	fx := newEndpointFixture(t)
	scopes := func(n int) []string {
		s := make([]string, n)
		for i := range s {
			s[i] = fmt.Sprintf("repository:r/n%d:pull", i)
		}
		return s
	}
	q := url.Values{"scope": scopes(64)}
	if g := fx.grantOf(t, serveToken(fx.e, fx.bearerUpstream(), getToken(q.Encode()))); len(g.Scopes) != 64 {
		t.Errorf("%d scopes", len(g.Scopes))
	}
	for _, q := range []url.Values{
		{"scope": scopes(65)},
		{"scope": {strings.Join(scopes(65), " ")}},
		{"scope": append(scopes(60), strings.Join(scopes(5), " "))},
	} {
		a := serveToken(fx.e, fx.bearerUpstream(), getToken(q.Encode()))
		if a.status != http.StatusBadRequest || a.errorCode() != "invalid_request" {
			t.Errorf("65 scopes: %d %s, want 400 invalid_request", a.status, a.errorCode())
		}
	}
	a := serveToken(fx.e, fx.bearerUpstream(), postToken(url.Values{"scope": scopes(65)}))
	if a.status != http.StatusBadRequest {
		t.Errorf("65 scopes in a POST: %d", a.status)
	}
}

func TestEndpointInvalidScope(t *testing.T) {
	fx := newEndpointFixture(t)
	for _, s := range []string{"repository:Alpine:pull", "repository:a", "repository:a:pull\"", "repository:a/../b:pull", "repository:a:PULL"} {
		a := serveToken(fx.e, fx.bearerUpstream(), withBasic(getToken("scope="+url.QueryEscape(s)), "alice", "pw"))
		if a.status != http.StatusBadRequest || a.errorCode() != "invalid_scope" {
			t.Errorf("scope %q: %d %s, want 400 invalid_scope", s, a.status, a.raw)
		}
	}
	if n := fx.ts.requests.Load(); n != 0 {
		t.Errorf("invalid scopes reached the token service (%d requests)", n)
	}
}

func TestEndpointBadRequests(t *testing.T) {
	fx := newEndpointFixture(t)
	tests := []*http.Request{
		func() *http.Request {
			r := getToken("scope=repository:a/b:pull")
			r.Header.Set("Authorization", "Bearer something")
			return r
		}(),
		func() *http.Request {
			r := getToken("")
			r.Header.Set("Authorization", "Basic !!!not-base64")
			return r
		}(),
		withBasic(getToken(""), "", "pw"),
		func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/v2/auth", strings.NewReader("scope=%zz"))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return r
		}(),
		func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/v2/auth", strings.NewReader("scope="+strings.Repeat("a", 70<<10)))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return r
		}(),
		postToken(url.Values{"grant_type": {"client_credentials"}}),
		getToken("service=" + strings.Repeat("s", 17<<10)),
		withBasic(getToken(""), strings.Repeat("u", 257), "pw"),
		withBasic(getToken(""), "alice", strings.Repeat("p", 4<<10+1)),
		postToken(url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {strings.Repeat("p", 4<<10+1)}}),
	}
	for _, r := range tests {
		a := serveToken(fx.e, fx.bearerUpstream(), r)
		if a.status != http.StatusBadRequest || a.errorCode() != "invalid_request" {
			t.Errorf("%s %.80s (Authorization %.40q): %d %s, want 400 invalid_request", r.Method, r.URL, r.Header.Get("Authorization"), a.status, a.raw)
		}
	}
	for _, method := range []string{http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
		a := serveToken(fx.e, fx.bearerUpstream(), httptest.NewRequest(method, "/v2/auth", nil))
		errs, _ := a.body["errors"].([]any)
		if a.status != http.StatusMethodNotAllowed || a.errorCode() != "invalid_request" || a.header.Get("Allow") != "GET, HEAD, POST" ||
			len(errs) != 1 || errs[0].(map[string]any)["code"] != "UNSUPPORTED" {
			t.Errorf("%s: %d %v %s, want 405 invalid_request with Allow", method, a.status, a.header, a.raw)
		}
	}
	if n := fx.ts.requests.Load(); n != 0 {
		t.Errorf("bad requests reached the token service (%d requests)", n)
	}

	// The longest credentials accepted still make a token that opens, on
	// an upstream that challenges with Basic (whose grant carries them).
	basic := Challenge{Scheme: "Basic", Params: map[string]string{"realm": "r"}}
	up := Upstream{ID: "https://private.example", Challenge: &basic, CheckBasic: func(context.Context, string) error { return nil }}
	fx.grantOf(t, serveToken(fx.e, up, withBasic(getToken("scope=repository:a/b:pull"), strings.Repeat("u", 256), strings.Repeat("p", 4<<10))))
}

func TestEndpointUnreachable(t *testing.T) {
	fx := newEndpointFixture(t)
	up := Upstream{ID: hubID, Unreachable: errors.New("dial tcp: connection refused"), NormalizeScope: libraryScope}

	a := serveToken(fx.e, up, withBasic(getToken("scope=repository:a/b:pull"), "alice", "pw"))
	if a.status != http.StatusServiceUnavailable || a.errorCode() != "temporarily_unavailable" {
		t.Errorf("with credentials: %d %s, want 503 temporarily_unavailable", a.status, a.raw)
	}
	a = serveToken(fx.e, up, postToken(url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"pw"}}))
	if a.status != http.StatusServiceUnavailable {
		t.Errorf("password grant: %d %s, want 503", a.status, a.raw)
	}

	g := fx.grantOf(t, serveToken(fx.e, up, getToken("scope=repository:alpine:pull")))
	if !g.Anonymous() || g.Upstream != hubID || !slices.Equal(g.Scopes, []string{"repository:library/alpine:pull"}) {
		t.Errorf("anonymous grant %+v", g)
	}
}

func TestEndpointOpenUpstream(t *testing.T) {
	fx := newEndpointFixture(t)
	// An upstream that asks for no authentication: credentials are not
	// needed, the client gets an anonymous token.
	up := Upstream{ID: "http://127.0.0.1:5000"}
	g := fx.grantOf(t, serveToken(fx.e, up, withBasic(getToken("scope=repository:a:pull"), "alice", "pw")))
	if !g.Anonymous() || g.Upstream != up.ID {
		t.Errorf("grant %+v", g)
	}
}

func TestEndpointBasicChallenge(t *testing.T) {
	fx := newEndpointFixture(t)
	basic := Challenge{Scheme: "Basic", Params: map[string]string{"realm": "Registry Realm"}}
	var checked []string
	check := func(err error) func(context.Context, string) error {
		return func(ctx context.Context, authorization string) error {
			checked = append(checked, authorization)
			return err
		}
	}
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:p:w"))

	up := Upstream{ID: "https://private.example", Challenge: &basic, CheckBasic: check(nil)}
	a := serveToken(fx.e, up, withBasic(getToken("scope=repository:team/app:pull"), "alice", "p:w"))
	g := fx.grantOf(t, a)
	if g.Authorization != wantAuth || g.Upstream != up.ID {
		t.Errorf("grant %+v, want Authorization %q", g, wantAuth)
	}
	if !slices.Equal(checked, []string{wantAuth}) {
		t.Errorf("CheckBasic got %q", checked)
	}
	if a.body["expires_in"] != float64(3600) {
		t.Errorf("expires_in %v", a.body["expires_in"])
	}

	up.CheckBasic = check(ErrRefused)
	a = serveToken(fx.e, up, withBasic(getToken(""), "alice", "wrong"))
	if a.status != http.StatusUnauthorized || a.errorCode() != "invalid_grant" {
		t.Errorf("refused: %d %s, want 401 invalid_grant", a.status, a.raw)
	}
	up.CheckBasic = check(fmt.Errorf("checking: %w", ErrRefused))
	if a = serveToken(fx.e, up, withBasic(getToken(""), "alice", "wrong")); a.status != http.StatusUnauthorized {
		t.Errorf("wrapped refusal: %d, want 401", a.status)
	}
	up.CheckBasic = check(errors.New("upstream answered 500"))
	if a = serveToken(fx.e, up, withBasic(getToken(""), "alice", "pw")); a.status != http.StatusBadGateway {
		t.Errorf("upstream failure: %d %s, want 502", a.status, a.raw)
	}

	// Anonymous clients are not checked.
	checked = nil
	up.CheckBasic = check(ErrRefused)
	if g := fx.grantOf(t, serveToken(fx.e, up, getToken(""))); !g.Anonymous() || len(checked) != 0 {
		t.Errorf("anonymous: grant %+v, CheckBasic calls %q", g, checked)
	}

	// A Basic upstream the proxy cannot check, and an unknown scheme.
	up.CheckBasic = nil
	if a = serveToken(fx.e, up, withBasic(getToken(""), "alice", "pw")); a.status != http.StatusBadGateway {
		t.Errorf("Basic without CheckBasic: %d %s, want 502", a.status, a.raw)
	}
	neg := Challenge{Scheme: "Negotiate", Params: map[string]string{}}
	if a = serveToken(fx.e, Upstream{ID: "x", Challenge: &neg}, withBasic(getToken(""), "alice", "pw")); a.status != http.StatusBadGateway || !strings.Contains(a.raw, "Negotiate") {
		t.Errorf("Negotiate: %d %s, want 502 naming the scheme", a.status, a.raw)
	}
}

func TestIdentify(t *testing.T) {
	fx := newEndpointFixture(t)
	issued := fx.grantOf(t, serveToken(fx.e, fx.bearerUpstream(), withBasic(getToken("scope=repository:alice/app:pull"), "alice", "pw")))
	tok, err := fx.e.Sealer.Seal(issued)
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := fx.e.Sealer.Seal(Grant{Upstream: hubID, Expiry: time.Now().Add(-time.Minute)})
	otherKey, _ := mustSealer(t, []byte("a different key, same upstream")).Seal(issued)

	req := func(authorization string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v2/alice/app/manifests/latest", nil)
		if authorization != "" {
			r.Header.Set("Authorization", authorization)
		}
		return r
	}
	tests := []struct {
		name, authorization, upstream string
		want                          Grant
		err                           error
	}{
		{"no header", "", hubID, Grant{Upstream: hubID}, nil},
		{"proxy token", "Bearer " + tok, hubID, issued, nil},
		{"lower-case scheme", "bearer " + tok, hubID, issued, nil},
		{"extra spaces", "Bearer   " + tok + " ", hubID, issued, nil},
		{"token of another upstream", "Bearer " + tok, "https://ghcr.io", Grant{}, ErrInvalidToken},
		{"expired", "Bearer " + expired, hubID, Grant{}, ErrInvalidToken},
		{"other key", "Bearer " + otherKey, hubID, Grant{}, ErrInvalidToken},
		{"foreign bearer", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", hubID, Grant{}, ErrInvalidToken},
		{"empty bearer", "Bearer", hubID, Grant{}, ErrInvalidToken},
		{"Basic", "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:pw")), hubID, Grant{Upstream: hubID}, nil},
		{"other scheme", "Negotiate abc", hubID, Grant{Upstream: hubID}, nil},
	}
	for _, tt := range tests {
		g, err := fx.e.Identify(req(tt.authorization), tt.upstream)
		if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
			t.Errorf("%s: error %v, want %v", tt.name, err, tt.err)
			continue
		}
		if err == nil {
			if !g.Expiry.Equal(tt.want.Expiry) {
				t.Errorf("%s: expiry %v, want %v", tt.name, g.Expiry, tt.want.Expiry)
			}
			g.Expiry, tt.want.Expiry = time.Time{}, time.Time{}
			if !reflect.DeepEqual(g, tt.want) {
				t.Errorf("%s: grant %+v, want %+v", tt.name, g, tt.want)
			}
		}
	}
	if anon, _ := fx.e.Identify(req(""), hubID); !anon.Anonymous() {
		t.Errorf("no header: not anonymous")
	}
}

// TestIdentifyIssuedToken: a token from the endpoint carries what the
// endpoint decided; one with client credentials works on its upstream only.
func TestIdentifyIssuedToken(t *testing.T) {
	fx := newEndpointFixture(t)
	for _, r := range []*http.Request{getToken("scope=repository:alpine:pull"), withBasic(getToken("scope=repository:alpine:pull"), "carol", "pw")} {
		a := serveToken(fx.e, fx.bearerUpstream(), r)
		tok, _ := a.body["token"].(string)
		req := httptest.NewRequest(http.MethodGet, "/v2/library/alpine/manifests/latest", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		g, err := fx.e.Identify(req, hubID)
		if err != nil {
			t.Fatalf("Identify: %v", err)
		}
		if !slices.Equal(g.Scopes, []string{"repository:library/alpine:pull"}) || g.Upstream != hubID {
			t.Errorf("grant %+v", g)
		}
		if _, user, _ := strings.Cut(r.Header.Get("Authorization"), " "); user != "" && g.Authorization != "Bearer tok-carol" {
			t.Errorf("grant %+v, want carol's upstream token", g)
		}
		// A grant with the client's upstream credentials is refused on
		// another upstream; an anonymous one carries nothing to protect
		// and works on every route (mirror hosts serve several).
		other, err := fx.e.Identify(req, "https://quay.io")
		if g.Anonymous() {
			if err != nil || other.Upstream != "https://quay.io" || !other.Anonymous() {
				t.Errorf("anonymous token on another upstream: %+v, %v", other, err)
			}
		} else if !errors.Is(err, ErrInvalidToken) {
			t.Errorf("token with credentials accepted on another upstream: %v", err)
		}
	}
}

// TestEndpointClientCredentialsOnlyToRealmOrigin: a client's Basic
// credentials, passed to the upstream's realm, do not follow the realm's
// redirect to another port of its host.
func TestEndpointClientCredentialsOnlyToRealmOrigin(t *testing.T) {
	fx := newEndpointFixture(t)
	other := newTokenServer(t)
	fx.ts.setReply(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/token?"+r.URL.RawQuery, http.StatusTemporaryRedirect)
	})
	r := withBasic(getToken("service=registry.docker.io&scope=repository:alice/private:pull"), "alice", "secret-pw")
	serveToken(fx.e, fx.bearerUpstream(), r)
	if _, pass, ok := other.last(t).BasicAuth(); ok {
		t.Errorf("the realm's redirect target on another port got the client's password %q", pass)
	}
}
