package registry

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// outcomeServer serves a Proxy over HTTP, as the handler does, and keeps
// the Result that Serve returned for each request.
type outcomeServer struct {
	t       *testing.T
	p       *Proxy
	url     string
	next    atomic.Int64
	results sync.Map // request id: chan Result
}

// requestIDHeader names each test request, to find its Result.
const requestIDHeader = "X-Test-Request"

func serveOutcomes(t *testing.T, p *Proxy) *outcomeServer {
	s := &outcomeServer{t: t, p: p}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func (s *outcomeServer) resultOf(id string) chan Result {
	ch, _ := s.results.LoadOrStore(id, make(chan Result, 1))
	return ch.(chan Result)
}

func (s *outcomeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	res := s.p.Serve(w, r)
	s.resultOf(r.Header.Get(requestIDHeader)) <- res
}

// seen is what a client saw of one response, with the outcome the proxy
// returned for it.
type seen struct {
	status      int
	cacheStatus string
	res         Result
}

// start sends a request and returns its response (body unread) and a
// function that waits for the proxy's Result once the body is read.
func (s *outcomeServer) start(method, path, token string) (*http.Response, func() Result) {
	s.t.Helper()
	id := strconv.FormatInt(s.next.Add(1), 10)
	req, err := http.NewRequest(method, s.url+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set(requestIDHeader, id)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp, func() Result {
		select {
		case res := <-s.resultOf(id):
			return res
		case <-time.After(time.Minute): // a hung handler, not a timing
			s.t.Fatalf("%s %s: the handler did not return", method, path)
			return Result{}
		}
	}
}

// do sends a request, reads the whole response and returns what it saw.
func (s *outcomeServer) do(method, path, token string) seen {
	s.t.Helper()
	resp, result := s.start(method, path, token)
	_, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		s.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return seen{status: resp.StatusCode, cacheStatus: resp.Header.Get("Cache-Status"), res: result()}
}

// token gets one of the proxy's tokens for repo, with Basic credentials
// when user is not empty.
func (s *outcomeServer) token(repo, user, password string) string {
	s.t.Helper()
	req, _ := http.NewRequest("GET", s.url+"/v2/auth?scope=repository:"+repo+":pull", nil)
	req.Header.Set(requestIDHeader, "token")
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK {
		s.t.Fatalf("token for %s: %d, %v", repo, resp.StatusCode, err)
	}
	<-s.resultOf("token")
	s.results.Delete("token")
	return tok.Token
}

// breakStore makes the store of a proxy unable to write (its temporary
// directory replaced by a file, which no write gets through even as
// root), while it still serves what it holds.
func breakStore(t *testing.T, dir string) {
	t.Helper()
	tmp := filepath.Join(dir, "tmp")
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestOutcomes: each outcome of a request, reached through a real proxy in
// front of the test upstream, gives the Cache-Status that README documents
// and the metric label the handler counts.
func TestOutcomes(t *testing.T) {
	const repo, tag = "team/app", "1"
	manifestPath := "/v2/" + repo + "/manifests/" + tag
	type env struct {
		up      *testupstream.Upstream
		s       *outcomeServer
		dir     string // the store's directory
		blob    string // the path of the image's layer
		private string // the path of a private image's manifest, by digest
	}
	setup := func(t *testing.T, tagTTL time.Duration) env {
		up := testupstream.Start(t, testupstream.Options{})
		_, blob := up.PushGeneratedImage(t, repo, tag, 1, 1<<20)
		up.SetPrivate("team/secret", "alice", "alice-pw")
		secret := up.PushRandomImage(t, "team/secret", "1", 1, 1024)
		d, _ := secret.Digest()
		dir := t.TempDir()
		p, _ := newTestProxyWith(t, up, tagTTL, blobcache.Options{Dir: dir}, zap.NewNop())
		return env{up: up, s: serveOutcomes(t, p), dir: dir,
			blob:    "/v2/" + repo + "/blobs/" + blob.Digest.String(),
			private: "/v2/team/secret/manifests/" + d.String()}
	}
	for _, tc := range []struct {
		name            string
		tagTTL          time.Duration
		run             func(t *testing.T, e env) seen
		wantCacheStatus string
		wantLabel       string
	}{
		{
			name: "miss",
			run: func(t *testing.T, e env) seen {
				return e.s.do("GET", manifestPath, "")
			},
			wantCacheStatus: "docker_proxy; fwd=miss",
			wantLabel:       "miss",
		},
		{
			name: "hit",
			run: func(t *testing.T, e env) seen {
				e.s.do("GET", manifestPath, "")
				return e.s.do("GET", manifestPath, "")
			},
			wantCacheStatus: "docker_proxy; hit",
			wantLabel:       "hit",
		},
		{
			name: "joined",
			run: func(t *testing.T, e env) seen {
				// The first request's fill is held by the upstream after
				// its first bytes; the second joins it.
				hold := e.up.Faults.HoldBlobs(64 << 10)
				first, firstDone := e.s.start("GET", e.blob, "")
				defer first.Body.Close()
				<-hold.Reached()
				got := func() seen {
					resp, result := e.s.start("GET", e.blob, "")
					defer resp.Body.Close()
					hold.Release()
					if _, err := io.Copy(io.Discard, resp.Body); err != nil {
						t.Fatal(err)
					}
					return seen{status: resp.StatusCode, cacheStatus: resp.Header.Get("Cache-Status"), res: result()}
				}()
				if _, err := io.Copy(io.Discard, first.Body); err != nil {
					t.Fatal(err)
				}
				if res := firstDone(); res.Outcome != OutcomeMiss {
					t.Errorf("the fill's leader: %v, want a miss", res)
				}
				return got
			},
			wantCacheStatus: "docker_proxy; fwd=miss; collapsed",
			wantLabel:       "joined",
		},
		{
			name:   "revalidated",
			tagTTL: time.Nanosecond,
			run: func(t *testing.T, e env) seen {
				e.s.do("GET", manifestPath, "")
				return e.s.do("GET", manifestPath, "")
			},
			wantCacheStatus: "docker_proxy; fwd=stale; fwd-status=200",
			wantLabel:       "revalidated",
		},
		{
			name:   "stale",
			tagTTL: time.Nanosecond,
			run: func(t *testing.T, e env) seen {
				e.s.do("GET", manifestPath, "")
				e.up.Faults.SetRegistryStatus(http.StatusServiceUnavailable)
				return e.s.do("GET", manifestPath, "")
			},
			wantCacheStatus: "docker_proxy; fwd=stale; fwd-status=503; detail=stale-if-error",
			wantLabel:       "stale",
		},
		{
			name: "bypass: cache off",
			run: func(t *testing.T, e env) seen {
				e.s.p.Cache = nil
				return e.s.do("GET", manifestPath, "")
			},
			wantCacheStatus: "docker_proxy; fwd=bypass",
			wantLabel:       "bypass",
		},
		{
			name: "cache unavailable: manifest",
			run: func(t *testing.T, e env) seen {
				breakStore(t, e.dir)
				return e.s.do("GET", manifestPath, "")
			},
			wantCacheStatus: "docker_proxy; fwd=bypass; detail=cache-unavailable",
			wantLabel:       "bypass",
		},
		{
			name: "cache unavailable: manifest by digest",
			run: func(t *testing.T, e env) seen {
				breakStore(t, e.dir)
				return e.s.do("GET", e.private, e.s.token("team/secret", "alice", "alice-pw"))
			},
			wantCacheStatus: "docker_proxy; fwd=bypass; detail=cache-unavailable",
			wantLabel:       "bypass",
		},
		{
			name: "cache unavailable: blob",
			run: func(t *testing.T, e env) seen {
				breakStore(t, e.dir)
				return e.s.do("GET", e.blob, "")
			},
			wantCacheStatus: "docker_proxy; fwd=bypass; detail=cache-unavailable",
			wantLabel:       "bypass",
		},
		{
			name: "refused",
			run: func(t *testing.T, e env) seen {
				return e.s.do("GET", e.private, "")
			},
			wantCacheStatus: "docker_proxy; fwd=miss; fwd-status=401",
			wantLabel:       "refused",
		},
		{
			name: "refused: cached",
			run: func(t *testing.T, e env) seen {
				if got := e.s.do("GET", e.private, e.s.token("team/secret", "alice", "alice-pw")); got.status != http.StatusOK {
					t.Fatalf("alice: %d", got.status)
				}
				return e.s.do("GET", e.private, "")
			},
			wantCacheStatus: "docker_proxy; fwd=miss; fwd-status=401",
			wantLabel:       "refused",
		},
		{
			name: "upstream error: manifest",
			run: func(t *testing.T, e env) seen {
				e.s.do("GET", e.blob, "") // the upstream's token, before it fails
				e.up.Faults.SetRegistryStatus(http.StatusBadGateway)
				return e.s.do("GET", manifestPath, "")
			},
			wantCacheStatus: "docker_proxy; fwd=miss; fwd-status=502",
			wantLabel:       "error",
		},
		{
			name: "upstream error: blob",
			run: func(t *testing.T, e env) seen {
				e.s.do("GET", manifestPath, "") // the upstream's token, before it fails
				e.up.Faults.SetRegistryStatus(http.StatusBadGateway)
				return e.s.do("GET", e.blob, "")
			},
			wantCacheStatus: "docker_proxy; fwd=miss; fwd-status=502",
			wantLabel:       "error",
		},
		{
			name: "upstream error: down",
			run: func(t *testing.T, e env) seen {
				if err := e.up.Faults.SetDown(true); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = e.up.Faults.Reset() })
				return e.s.do("GET", manifestPath, "")
			},
			wantCacheStatus: "docker_proxy; fwd=miss; detail=upstream-unavailable",
			wantLabel:       "error",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ttl := tc.tagTTL
			if ttl == 0 {
				ttl = time.Hour
			}
			got := tc.run(t, setup(t, ttl))
			if got.cacheStatus != tc.wantCacheStatus {
				t.Errorf("Cache-Status %q (HTTP %d), want %q", got.cacheStatus, got.status, tc.wantCacheStatus)
			}
			if got.res.CacheStatus() != got.cacheStatus {
				t.Errorf("Serve returned %+v, whose Cache-Status %q is not the response's %q", got.res, got.res.CacheStatus(), got.cacheStatus)
			}
			if l := got.res.Outcome.Label(); l != tc.wantLabel {
				t.Errorf("metric label %q, want %q", l, tc.wantLabel)
			}
		})
	}
}

// TestOutcomeShared: a blob that another instance uploaded to the shared
// tier is served as shared, counted as shared.
func TestOutcomeShared(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	_, blob := up.PushGeneratedImage(t, "team/app", "1", 1, 256<<10)
	_, shared := startShared(t)
	path := "/v2/team/app/blobs/" + blob.Digest.String()

	a, _ := newTestProxyWith(t, up, time.Hour, blobcache.Options{Remote: shared}, zap.NewNop())
	if got := serveOutcomes(t, a).do("GET", path, ""); got.res.Outcome != OutcomeMiss {
		t.Fatalf("A: %+v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.Cache.Store.WaitUploads(ctx); err != nil {
		t.Fatal(err)
	}
	b, _ := newTestProxyWith(t, up, time.Hour, blobcache.Options{Remote: shared}, zap.NewNop())
	got := serveOutcomes(t, b).do("GET", path, "")
	if want := "docker_proxy; fwd=miss; detail=shared"; got.cacheStatus != want || got.res.CacheStatus() != want {
		t.Errorf("B: Cache-Status %q, Serve returned %+v; want %q", got.cacheStatus, got.res, want)
	}
	if l := got.res.Outcome.Label(); l != "shared" {
		t.Errorf("metric label %q, want shared", l)
	}
}

// TestOutcomeLabelsAreBounded: every outcome has one of the labels the
// metric documents, and every outcome but none has a Cache-Status.
func TestOutcomeLabelsAreBounded(t *testing.T) {
	documented := map[string]bool{"hit": true, "miss": true, "shared": true, "joined": true, "revalidated": true,
		"stale": true, "bypass": true, "refused": true, "error": true, "none": true}
	for _, o := range Outcomes() {
		if !documented[o.Label()] {
			t.Errorf("outcome %d: label %q is not documented", o, o.Label())
		}
		if cs := (Result{Outcome: o}).CacheStatus(); (cs == "") != (o == OutcomeNone) {
			t.Errorf("outcome %d (%s): Cache-Status %q", o, o.Label(), cs)
		}
	}
}
