package tokenauth

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestFetchCacheBounded: the cache keeps tokens within MaxCacheBytes,
// the least recently used going first; a token in use stays.
func TestFetchCacheBounded(t *testing.T) {
	ts := newTokenServer(t)
	// Tokens of 2 KB, as Docker Hub's are.
	ts.setReply(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"token": strings.Repeat("t", 2048) + r.URL.Query().Get("scope"), "expires_in": 300})
	})
	f := &Fetcher{Client: ts.Client(), MaxCacheBytes: 64 << 10}
	ch := ts.challenge("s")
	fetch := func(i int) {
		t.Helper()
		if _, err := f.Fetch(context.Background(), ch, []string{fmt.Sprintf("repository:team/name%d:pull", i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	fetch(0)
	for i := 1; i <= 1000; i++ {
		fetch(i)
		fetch(0) // in use all along
	}
	requests := ts.requests.Load()
	if requests != 1001 {
		t.Fatalf("%d token requests for 1001 scopes, want 1001", requests)
	}
	fetch(0)
	fetch(1000)
	if n := ts.requests.Load() - requests; n != 0 {
		t.Errorf("the tokens used last were fetched again (%d requests)", n)
	}
	fetch(1)
	if n := ts.requests.Load() - requests; n != 1 {
		t.Errorf("the token used least recently was still cached: %d requests, want 1", n)
	}
	f.mu.Lock()
	entries, bytes := f.lru.Len(), f.bytes
	f.mu.Unlock()
	if bytes > 64<<10 || entries > 32 {
		t.Errorf("the cache holds %d tokens, %d bytes; want at most 64 KiB", entries, bytes)
	}
}

// TestFetchSharedLearns: FetchShared lends a token for one probe, and
// from the verdict on lends every time (accepted) or for no repository
// (refused); only pull scopes of one repository get a lent token.
func TestFetchSharedLearns(t *testing.T) {
	ts := newTokenServer(t)
	ts.setReply(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"token": "tok-" + strings.Join(r.URL.Query()["scope"], "+"), "expires_in": 300})
	})
	ctx := context.Background()
	ch := ts.challenge("s")
	scope := func(i int) []string { return []string{fmt.Sprintf("repository:r%d:pull", i)} }
	type answer struct {
		tok  string
		lent bool
	}
	get := func(f *Fetcher, s []string, creds *Credentials) answer {
		t.Helper()
		tok, lent, err := f.FetchShared(ctx, ch, s, creds)
		if err != nil {
			t.Fatal(err)
		}
		return answer{tok.Value, lent}
	}

	// Accepted: lent from then on.
	f := &Fetcher{Client: ts.Client()}
	if a := get(f, scope(1), nil); a.lent {
		t.Fatalf("first fetch lent %v", a)
	}
	if a := get(f, scope(2), nil); !a.lent || a.tok != "tok-repository:r1:pull" {
		t.Fatalf("second repository: %v, want r1's token lent", a)
	}
	// While the probe is out, others get their own tokens.
	if a := get(f, scope(3), nil); a.lent || a.tok != "tok-repository:r3:pull" {
		t.Fatalf("during the probe: %v, want r3's own token", a)
	}
	f.Lent(ch, nil, true)
	before := ts.requests.Load()
	for i := 4; i < 50; i++ {
		if a := get(f, scope(i), nil); !a.lent {
			t.Fatalf("r%d after an accepted probe: not lent", i)
		}
	}
	if n := ts.requests.Load() - before; n != 0 {
		t.Errorf("%d token requests once lending was accepted", n)
	}
	// Never for several scopes, push, or another identity.
	if a := get(f, []string{"repository:r60:pull", "repository:r61:pull"}, nil); a.lent {
		t.Error("lent for two scopes")
	}
	if a := get(f, []string{"repository:r62:pull,push"}, nil); a.lent {
		t.Error("lent for push")
	}
	alice := &Credentials{Username: "alice", Secret: "a"}
	if a := get(f, scope(63), alice); a.lent {
		t.Error("the anonymous token lent to alice")
	}

	// Refused: no more lending.
	f = &Fetcher{Client: ts.Client()}
	get(f, scope(1), nil)
	if a := get(f, scope(2), nil); !a.lent {
		t.Fatal("no probe")
	}
	f.Lent(ch, nil, false)
	for i := 3; i < 10; i++ {
		if a := get(f, scope(i), nil); a.lent || a.tok != fmt.Sprintf("tok-repository:r%d:pull", i) {
			t.Fatalf("r%d after a refused probe: %v, want its own token", i, a)
		}
	}
}

func FuzzIsPullScope(f *testing.F) {
	for _, s := range []string{"repository:a/b:pull", "repository:a:pull,push", "repository(plugin):a:pull", "registry:catalog:*", "repository::pull"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !isPullScope(s) {
			return
		}
		sc, err := ParseScope(s)
		if err != nil || sc.Type != "repository" || len(sc.Actions) != 1 || sc.Actions[0] != "pull" || sc.String() != s {
			t.Errorf("isPullScope(%q) for %+v, %v", s, sc, err)
		}
	})
}
