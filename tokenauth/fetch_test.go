package tokenauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// tokenServer is a token service in the style of auth.docker.io. It
// records what it is asked and answers with reply.
type tokenServer struct {
	*httptest.Server
	requests atomic.Int64

	mu    sync.Mutex
	seen  []*http.Request
	reply func(w http.ResponseWriter, r *http.Request)
}

func newTokenServer(t *testing.T) *tokenServer {
	t.Helper()
	ts := &tokenServer{}
	ts.reply = func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"token": "tok-" + r.URL.Query().Get("account"), "expires_in": 300})
	}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.requests.Add(1)
		ts.mu.Lock()
		ts.seen = append(ts.seen, r.Clone(context.Background()))
		reply := ts.reply
		ts.mu.Unlock()
		reply(w, r)
	}))
	t.Cleanup(ts.Close)
	return ts
}

func (ts *tokenServer) setReply(f func(w http.ResponseWriter, r *http.Request)) {
	ts.mu.Lock()
	ts.reply = f
	ts.mu.Unlock()
}

func (ts *tokenServer) last(t *testing.T) *http.Request {
	t.Helper()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.seen) == 0 {
		t.Fatal("the token service got no request")
	}
	return ts.seen[len(ts.seen)-1]
}

func (ts *tokenServer) challenge(service string) Challenge {
	c := Challenge{Scheme: "Bearer", Params: map[string]string{"realm": ts.URL + "/token"}}
	if service != "" {
		c.Params["service"] = service
	}
	return c
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func TestFetchRequest(t *testing.T) {
	ts := newTokenServer(t)
	f := &Fetcher{Client: ts.Client(), UserAgent: "dockerproxy-test/1"}
	scopes := []string{"repository:library/alpine:pull", "repository:library/busybox:pull,push"}
	tok, err := f.Fetch(context.Background(), ts.challenge("registry.docker.io"), scopes, &Credentials{Username: "alice", Secret: "s3cr:et"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Value != "tok-alice" {
		t.Errorf("token %q", tok.Value)
	}
	r := ts.last(t)
	if r.Method != http.MethodGet || r.URL.Path != "/token" {
		t.Errorf("request %s %s", r.Method, r.URL.Path)
	}
	q := r.URL.Query()
	if q.Get("service") != "registry.docker.io" || q.Get("account") != "alice" || !slices.Equal(q["scope"], scopes) {
		t.Errorf("query %v", q)
	}
	if user, pass, ok := r.BasicAuth(); !ok || user != "alice" || pass != "s3cr:et" {
		t.Errorf("Basic auth %q %q %v", user, pass, ok)
	}
	if ua := r.Header.Get("User-Agent"); ua != "dockerproxy-test/1" {
		t.Errorf("User-Agent %q", ua)
	}
}

func TestFetchAnonymous(t *testing.T) {
	ts := newTokenServer(t)
	f := &Fetcher{Client: ts.Client()}
	if _, err := f.Fetch(context.Background(), ts.challenge(""), []string{"repository:a:pull"}, nil); err != nil {
		t.Fatal(err)
	}
	r := ts.last(t)
	if h := r.Header.Get("Authorization"); h != "" {
		t.Errorf("anonymous fetch sent Authorization %q", h)
	}
	q := r.URL.Query()
	if q.Has("account") || q.Has("service") || !slices.Equal(q["scope"], []string{"repository:a:pull"}) {
		t.Errorf("query %v", q)
	}
}

func TestFetchKeepsRealmQuery(t *testing.T) {
	ts := newTokenServer(t)
	f := &Fetcher{Client: ts.Client()}
	ch := Challenge{Scheme: "Bearer", Params: map[string]string{"realm": ts.URL + "/token?region=eu&service=old", "service": "new"}}
	if _, err := f.Fetch(context.Background(), ch, nil, nil); err != nil {
		t.Fatal(err)
	}
	q := ts.last(t).URL.Query()
	if q.Get("region") != "eu" || !slices.Equal(q["service"], []string{"new"}) || q.Has("scope") {
		t.Errorf("query %v", q)
	}
}

func TestFetchTokenField(t *testing.T) {
	for _, tt := range []struct {
		body any
		want string
	}{
		{map[string]any{"token": "a"}, "a"},
		{map[string]any{"access_token": "b"}, "b"},
		{map[string]any{"token": "a", "access_token": "b"}, "a"},
		{map[string]any{"token": "", "access_token": "b"}, "b"},
	} {
		ts := newTokenServer(t)
		ts.setReply(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, tt.body) })
		f := &Fetcher{Client: ts.Client()}
		tok, err := f.Fetch(context.Background(), ts.challenge("s"), nil, nil)
		if err != nil || tok.Value != tt.want {
			t.Errorf("body %v: %q, %v; want %q", tt.body, tok.Value, err, tt.want)
		}
	}
}

func TestParseTokenResponse(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		body   string
		value  string        // "" means an error
		expiry time.Duration // after now
	}{
		{`{"token":"t","expires_in":300}`, "t", 300 * time.Second},
		{`{"token":"t"}`, "t", 60 * time.Second},
		{`{"token":"t","expires_in":0}`, "t", 60 * time.Second},
		{`{"token":"t","expires_in":1}`, "t", 60 * time.Second},
		{`{"token":"t","expires_in":59}`, "t", 60 * time.Second},
		{`{"token":"t","expires_in":60}`, "t", 60 * time.Second},
		{`{"token":"t","expires_in":61}`, "t", 61 * time.Second},
		{`{"token":"t","expires_in":-100}`, "t", 60 * time.Second},
		{`{"access_token":"oauth","expires_in":3600,"issued_at":"2026-01-01T00:00:00Z"}`, "oauth", time.Hour},
		{`{"token":"a","access_token":"b"}`, "a", 60 * time.Second},
		{`{"token":"t","expires_in":300,"refresh_token":"r","extra":[1,2]}`, "t", 300 * time.Second},
		{`{"token":"t","issued_at":"not a time"}`, "t", 60 * time.Second},

		{``, "", 0},
		{`not json`, "", 0},
		{`<html>rate limited</html>`, "", 0},
		{`{"token":`, "", 0},
		{`[]`, "", 0},
		{`"token"`, "", 0},
		{`{}`, "", 0},
		{`null`, "", 0},
		{`{"token":""}`, "", 0},
		{`{"token":null,"access_token":null}`, "", 0},
		{`{"token":42}`, "", 0},
		{`{"token":"t","expires_in":"300"}`, "", 0},
		{`{"token":"a\r\nX-Injected: 1"}`, "", 0},
		{`{"token":"a\nb"}`, "", 0},
		{`{"token":"a\rb"}`, "", 0},
		{`{"access_token":"a\nb"}`, "", 0},
	}
	for _, tt := range tests {
		tok, err := parseTokenResponse([]byte(tt.body), now)
		if tt.value == "" {
			if err == nil {
				t.Errorf("parseTokenResponse(%s) = %+v, want an error", tt.body, tok)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseTokenResponse(%s): %v", tt.body, err)
			continue
		}
		if tok.Value != tt.value || !tok.Expiry.Equal(now.Add(tt.expiry)) {
			t.Errorf("parseTokenResponse(%s) = %q expiring %v, want %q after %v", tt.body, tok.Value, tok.Expiry.Sub(now), tt.value, tt.expiry)
		}
	}
}

func TestFetchShortExpiry(t *testing.T) {
	ts := newTokenServer(t)
	ts.setReply(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"token": "t", "expires_in": 10})
	})
	f := &Fetcher{Client: ts.Client()}
	before := time.Now()
	tok, err := f.Fetch(context.Background(), ts.challenge("s"), nil, nil)
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if tok.Expiry.Before(before.Add(60*time.Second)) || tok.Expiry.After(after.Add(60*time.Second)) {
		t.Errorf("expiry %v, want 60s after the fetch (%v..%v)", tok.Expiry, before, after)
	}
	// A 60-second token is still worth caching.
	if _, err := f.Fetch(context.Background(), ts.challenge("s"), nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := ts.requests.Load(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestFetchCaching(t *testing.T) {
	ts := newTokenServer(t)
	f := &Fetcher{Client: ts.Client()}
	ctx := context.Background()
	ch := ts.challenge("s")
	alice := &Credentials{Username: "alice", Secret: "a"}
	fetch := func(ch Challenge, scopes []string, creds *Credentials) Token {
		t.Helper()
		tok, err := f.Fetch(ctx, ch, scopes, creds)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	expect := func(n int64, what string) {
		t.Helper()
		if got := ts.requests.Load(); got != n {
			t.Fatalf("%s: %d requests to the token service, want %d", what, got, n)
		}
	}

	first := fetch(ch, []string{"repository:a:pull", "repository:b:pull"}, nil)
	expect(1, "first fetch")
	// The cache renews early, so a cached token may report an earlier
	// expiry, never a later one.
	if again := fetch(ch, []string{"repository:a:pull", "repository:b:pull"}, nil); again.Value != first.Value || again.Expiry.After(first.Expiry) {
		t.Errorf("cached token %+v, want %+v", again, first)
	}
	expect(1, "same fetch again")
	fetch(ch, []string{"repository:b:pull", "repository:a:pull"}, nil)
	expect(1, "scopes in another order")

	fetch(ch, []string{"repository:a:pull"}, nil)
	expect(2, "other scopes")
	fetch(ch, []string{"repository:a:pull", "repository:b:pull"}, alice)
	expect(3, "with credentials")
	fetch(ch, []string{"repository:a:pull", "repository:b:pull"}, alice)
	expect(3, "with credentials again")
	fetch(ch, []string{"repository:a:pull", "repository:b:pull"}, &Credentials{Username: "alice", Secret: "other"})
	expect(4, "same user, other secret")
	fetch(ch, []string{"repository:a:pull", "repository:b:pull"}, &Credentials{Username: "bob", Secret: "a"})
	expect(5, "other user")
	fetch(ts.challenge("other-service"), []string{"repository:a:pull", "repository:b:pull"}, nil)
	expect(6, "other service")

	f.Forget(ch, []string{"repository:b:pull", "repository:a:pull"}, nil)
	fetch(ch, []string{"repository:a:pull", "repository:b:pull"}, nil)
	expect(7, "after Forget")
	fetch(ch, []string{"repository:a:pull", "repository:b:pull"}, alice)
	expect(7, "Forget of the anonymous token keeps alice's")
	f.Forget(ch, []string{"repository:a:pull", "repository:b:pull"}, alice)
	fetch(ch, []string{"repository:a:pull", "repository:b:pull"}, alice)
	expect(8, "after Forget of alice's")

	// An entry past its expiry is fetched again.
	f.mu.Lock()
	for _, e := range f.cache {
		e.Value.(*cached).tok.Expiry = time.Now().Add(-time.Second)
	}
	f.mu.Unlock()
	fetch(ch, []string{"repository:a:pull", "repository:b:pull"}, nil)
	expect(9, "after expiry")
}

// TestFetchCacheKeyHoldsNoSecret: the cache is keyed by a hash.
func TestFetchCacheKeyHoldsNoSecret(t *testing.T) {
	ts := newTokenServer(t)
	f := &Fetcher{Client: ts.Client()}
	if _, err := f.Fetch(context.Background(), ts.challenge("s"), nil, &Credentials{Username: "alice", Secret: "hunter2-secret"}); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range f.cache {
		if strings.Contains(k, "hunter2") {
			t.Errorf("cache key %q holds the secret", k)
		}
	}
}

func TestFetchSingleflight(t *testing.T) {
	const n = 50
	ts := newTokenServer(t)
	var started sync.WaitGroup
	started.Add(n)
	release := make(chan struct{})
	ts.setReply(func(w http.ResponseWriter, r *http.Request) {
		<-release
		writeJSON(w, 200, map[string]any{"token": "shared", "expires_in": 300})
	})
	f := &Fetcher{Client: ts.Client()}
	ch := ts.challenge("s")
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			tok, err := f.Fetch(context.Background(), ch, []string{"repository:a:pull"}, nil)
			if err == nil && tok.Value != "shared" {
				err = fmt.Errorf("token %q", tok.Value)
			}
			errs <- err
		}()
	}
	// Hold the token service until every caller has started, so that they
	// all arrive while the first fetch is under way.
	started.Wait()
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := ts.requests.Load(); got != 1 {
		t.Errorf("%d concurrent fetches made %d requests, want 1", n, got)
	}
}

func TestFetchErrors(t *testing.T) {
	tests := []struct {
		name    string
		reply   func(w http.ResponseWriter, r *http.Request)
		refused bool
		status  int // a *StatusError with this status
	}{
		{"401", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 401, map[string]any{"details": "incorrect username or password"})
		}, true, 0},
		{"403", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(403) }, true, 0},
		{"500", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }, false, 500},
		{"503", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }, false, 503},
		{"429", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(429) }, false, 429},
		{"404", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) }, false, 404},
		{"201 is not 200", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 201, map[string]any{"token": "t"})
		}, false, 201},
		{"non-JSON", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("<html>hello</html>")) }, false, 0},
		{"empty body", func(w http.ResponseWriter, r *http.Request) {}, false, 0},
		{"missing token", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]any{"expires_in": 300})
		}, false, 0},
		{"token with CR/LF", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]any{"token": "abc\r\nSet-Cookie: x=y"})
		}, false, 0},
		{"huge body", func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(`{"token":"` + strings.Repeat("a", 2<<20) + `"}`))
		}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTokenServer(t)
			ts.setReply(tt.reply)
			f := &Fetcher{Client: ts.Client()}
			tok, err := f.Fetch(context.Background(), ts.challenge("s"), []string{"repository:a:pull"}, &Credentials{Username: "u", Secret: "p"})
			if err == nil {
				t.Fatalf("Fetch = %+v, want an error", tok)
			}
			if tok != (Token{}) {
				t.Errorf("Fetch returned %+v with the error", tok)
			}
			if errors.Is(err, ErrRefused) != tt.refused {
				t.Errorf("errors.Is(%v, ErrRefused) = %v", err, !tt.refused)
			}
			var se *StatusError
			if got := errors.As(err, &se); got != (tt.status != 0) || got && (se.Status != tt.status || se.Host != strings.TrimPrefix(ts.URL, "http://")) {
				t.Errorf("error %v (%#v), want StatusError %d", err, se, tt.status)
			}
			if strings.Contains(err.Error(), "p@") || strings.Contains(err.Error(), "Set-Cookie") {
				t.Errorf("error %q leaks the request or the response", err)
			}
			// Errors are not cached: the next Fetch asks again.
			_, _ = f.Fetch(context.Background(), ts.challenge("s"), []string{"repository:a:pull"}, &Credentials{Username: "u", Secret: "p"})
			if n := ts.requests.Load(); n != 2 {
				t.Errorf("%d requests after two failed fetches, want 2", n)
			}
		})
	}
}

func TestFetchBadRealm(t *testing.T) {
	ts := newTokenServer(t)
	f := &Fetcher{Client: ts.Client()}
	host := strings.TrimPrefix(ts.URL, "http://")
	for _, realm := range []string{
		"",
		"/token",
		"token",
		host + "/token",
		"ftp://" + host + "/token",
		"file:///etc/passwd",
		"javascript:alert(1)",
		"https://",
		"http:///token",
		"http://%zz/",
		"gopher://" + host + "/",
	} {
		ch := Challenge{Scheme: "Bearer", Params: map[string]string{"realm": realm}}
		if tok, err := f.Fetch(context.Background(), ch, nil, &Credentials{Username: "u", Secret: "p"}); err == nil {
			t.Errorf("realm %q: got %+v, want an error", realm, tok)
		}
	}
	if n := ts.requests.Load(); n != 0 {
		t.Errorf("%d requests for bad realms", n)
	}
}

// TestFetchRedirectDropsCredentials: a realm that redirects to another host
// does not get the client's credentials sent there. The other host is a
// name of this test's own, dialed at the other token server, so the
// redirect is followed on any machine.
func TestFetchRedirectDropsCredentials(t *testing.T) {
	other := newTokenServer(t)
	otherAddr := other.Listener.Addr().String()
	ts := newTokenServer(t)
	ts.setReply(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://other.example.test/token?"+r.URL.RawQuery, http.StatusTemporaryRedirect)
	})
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == "other.example.test:80" {
			addr = otherAddr
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	f := &Fetcher{Client: &http.Client{Transport: tr}}
	ch := Challenge{Scheme: "Bearer", Params: map[string]string{"realm": ts.URL + "/token"}}
	if _, err := f.Fetch(context.Background(), ch, nil, &Credentials{Username: "u", Secret: "p"}); err != nil {
		t.Fatalf("redirected token request: %v", err)
	}
	if n := other.requests.Load(); n != 1 {
		t.Fatalf("the redirect target got %d requests, want 1", n)
	}
	if h := other.last(t).Header.Get("Authorization"); h != "" {
		t.Errorf("the redirect target got Authorization %q", h)
	}
}

func TestFetchContextCanceled(t *testing.T) {
	ts := newTokenServer(t)
	f := &Fetcher{Client: ts.Client()}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.Fetch(ctx, ts.challenge("s"), nil, nil); err == nil {
		t.Error("Fetch with a canceled context succeeded")
	}
	// Nothing cached: a live context fetches.
	if _, err := f.Fetch(context.Background(), ts.challenge("s"), nil, nil); err != nil {
		t.Error(err)
	}
}

func FuzzParseTokenResponse(f *testing.F) {
	for _, s := range []string{
		`{"token":"t","expires_in":300}`, `{"access_token":"a"}`, `{"token":"a\nb"}`,
		`{"token":"t","expires_in":-1}`, `{"token":"t","expires_in":9223372036854775807}`, `null`, `[`,
	} {
		f.Add([]byte(s))
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte) {
		tok, err := parseTokenResponse(body, now)
		if err != nil {
			if tok != (Token{}) {
				t.Fatalf("token %+v with error %v", tok, err)
			}
			return
		}
		if tok.Value == "" || strings.ContainsAny(tok.Value, "\r\n") {
			t.Fatalf("accepted token %q", tok.Value)
		}
		if tok.Expiry.Before(now.Add(60 * time.Second)) {
			t.Fatalf("token expires %v after issue, want at least 60s", tok.Expiry.Sub(now))
		}
	})
}

// TestFetchJoinedCallerSurvivesFirstCallerCancel: concurrent Fetches share
// one request; when the client whose request started it goes away (its
// context is canceled), the others must still get their token. A Fetch
// that ran the shared request with the first caller's context would fail
// them with "context canceled" instead. The token service is in memory,
// in a synctest bubble, so the test knows when each caller is blocked:
// B calls Fetch only once A's request is at the token service, A goes
// away only once B waits, and one request in all shows B joined A's.
func TestFetchJoinedCallerSurvivesFirstCallerCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var requests atomic.Int32
		release := make(chan struct{})
		service := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			requests.Add(1)
			select {
			case <-release:
			case <-r.Context().Done():
				return nil, r.Context().Err()
			}
			return &http.Response{
				StatusCode: http.StatusOK,
				Header:     http.Header{"Content-Type": {"application/json"}},
				Body:       io.NopCloser(strings.NewReader(`{"token":"t","expires_in":300}`)),
				Request:    r,
			}, nil
		})
		f := &Fetcher{Client: &http.Client{Transport: service}}
		ch := Challenge{Scheme: "Bearer", Params: map[string]string{"realm": "https://auth.example/token", "service": "s"}}
		scopes := []string{"repository:a:pull"}

		ctxA, cancelA := context.WithCancel(context.Background())
		defer cancelA()
		errA := make(chan error, 1)
		go func() {
			_, err := f.Fetch(ctxA, ch, scopes, nil)
			errA <- err
		}()
		synctest.Wait() // A's request is at the token service
		if n := requests.Load(); n != 1 {
			t.Fatalf("%d requests at the token service after A's Fetch, want 1", n)
		}

		errB := make(chan error, 1)
		go func() {
			tok, err := f.Fetch(context.Background(), ch, scopes, nil)
			if err == nil && tok.Value != "t" {
				err = fmt.Errorf("token %q", tok.Value)
			}
			errB <- err
		}()
		synctest.Wait() // B waits for a token
		cancelA()
		<-errA
		close(release)
		if err := <-errB; err != nil {
			t.Errorf("B's Fetch failed because A went away: %v", err)
		}
		if n := requests.Load(); n != 1 {
			t.Errorf("%d requests at the token service, want 1: B did not join A's fetch", n)
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestFetchRedirectCredentialsOnlyToRealmOrigin: the configured
// credentials go to the realm's exact origin and nowhere else. net/http
// compares host names only, so a redirect to another port of the realm's
// host, or from https down to http, would carry them.
func TestFetchRedirectCredentialsOnlyToRealmOrigin(t *testing.T) {
	other := newTokenServer(t) // another service on the same host
	tlsRealm := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/token?"+r.URL.RawQuery, http.StatusTemporaryRedirect)
	}))
	defer tlsRealm.Close()
	ts := newTokenServer(t)
	ts.setReply(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/token": // moved within the realm's origin: keeps the credentials
			http.Redirect(w, r, "/moved?"+r.URL.RawQuery, http.StatusTemporaryRedirect)
		case "/moved": // then to another port of the same host
			if r.Header.Get("Authorization") == "" {
				t.Error("a redirect within the realm's origin lost the credentials")
			}
			http.Redirect(w, r, other.URL+"/token?"+r.URL.RawQuery, http.StatusTemporaryRedirect)
		}
	})
	for name, realm := range map[string]string{
		"other port": ts.URL + "/token",
		"downgrade":  tlsRealm.URL + "/token",
	} {
		t.Run(name, func(t *testing.T) {
			f := &Fetcher{Client: tlsRealm.Client()}
			ch := Challenge{Scheme: "Bearer", Params: map[string]string{"realm": realm}}
			if _, err := f.Fetch(context.Background(), ch, nil, &Credentials{Username: "u", Secret: "p"}); err != nil {
				t.Fatal(err)
			}
			if h := other.last(t).Header.Get("Authorization"); h != "" {
				t.Errorf("the redirect target got Authorization %q", h)
			}
		})
	}
}

func TestSameOrigin(t *testing.T) {
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{"https://auth.example/token", "https://auth.example/other?x=1", true},
		{"https://auth.example/token", "https://auth.example:443/token", true},
		{"https://AUTH.example/token", "https://auth.example/token", true},
		{"http://auth.example/token", "http://auth.example:80/", true},
		{"https://auth.example/token", "https://auth.example:8443/token", false},
		{"https://auth.example/token", "http://auth.example/token", false},
		{"https://auth.example/token", "http://auth.example:443/token", false},
		{"https://auth.example/token", "https://evil.auth.example/token", false},
		{"https://auth.example/token", "https://example/token", false},
		{"http://127.0.0.1:5000/token", "http://127.0.0.1:5001/token", false},
		{"https://[::1]:5000/", "https://[::1]:5000/x", true},
		{"/relative", "/relative", false},
	} {
		a, _ := url.Parse(c.a)
		b, _ := url.Parse(c.b)
		if got := sameOrigin(a, b); got != c.same {
			t.Errorf("sameOrigin(%s, %s) = %v, want %v", c.a, c.b, got, c.same)
		}
		if got := sameOrigin(b, a); got != c.same {
			t.Errorf("sameOrigin(%s, %s) = %v, want %v", c.b, c.a, got, c.same)
		}
	}
}

func FuzzSameOrigin(f *testing.F) {
	f.Add("https://auth.example/token", "https://auth.example:443/x")
	f.Add("https://auth.example/token", "http://auth.example/token")
	f.Add("http://[::1]:80/", "http://[::1]/")
	f.Fuzz(func(t *testing.T, a, b string) {
		ua, err := url.Parse(a)
		if err != nil {
			return
		}
		ub, err := url.Parse(b)
		if err != nil {
			return
		}
		same := sameOrigin(ua, ub)
		if same != sameOrigin(ub, ua) {
			t.Fatalf("sameOrigin(%q, %q) is not symmetric", a, b)
		}
		if same && (ua.Scheme != ub.Scheme || !strings.EqualFold(ua.Hostname(), ub.Hostname())) {
			t.Fatalf("sameOrigin(%q, %q) across schemes or hosts", a, b)
		}
	})
}
