package dockerproxy_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// accessLogEntries reads a Caddy access log in its JSON format.
func accessLogEntries(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("access log line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// TestAccessLogPlaceholders: log_append puts the proxy's placeholders in
// a real Caddy access log: the upstream's name, the repository, the cache
// outcome, the request kind and the proxy account of a private site.
func TestAccessLogPlaceholders(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{Service: "registry.docker.io"})
	img := up.PushRandomImage(t, "team/app", "v1", 1, 4096)
	e := startProxy(t, up, `http://docker.example.test:{PORT} {
	log {
		output file {DIR}/access.log
		format json
	}
	log_append upstream {http.docker_proxy.upstream}
	log_append repository {http.docker_proxy.repository}
	log_append cache {http.docker_proxy.cache}
	log_append kind {http.docker_proxy.kind}
	log_append account {http.docker_proxy.account}
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		users {
			alice `+aliceHash+`
		}
		cache {DIR}/cache
	}
}`)
	alice := &authn.Basic{Username: "alice", Password: "alice-pass"}
	ref := e.ref("docker.example.test", "team/app:v1")
	for range 2 {
		if err := e.pullImage(ref, alice, img); err != nil {
			t.Fatal(err)
		}
	}
	manifestURI := "/v2/team/app/manifests/v1"
	type fields struct{ upstream, repository, cache, kind, account string }
	var manifests []fields
	var token *fields
	logPath := filepath.Join(filepath.Dir(e.logPath), "access.log")
	waitUntil(t, "the second manifest GET logged", func() bool {
		manifests, token = nil, nil
		for _, m := range accessLogEntries(t, logPath) {
			req, _ := m["request"].(map[string]any)
			uri, _ := req["uri"].(string)
			str := func(k string) string { s, _ := m[k].(string); return s }
			f := fields{str("upstream"), str("repository"), str("cache"), str("kind"), str("account")}
			switch {
			case uri == manifestURI && req["method"] == "GET":
				manifests = append(manifests, f)
			case f.kind == "token" && token == nil:
				token = &f
			}
		}
		return len(manifests) == 2
	})
	for i, wantCache := range []string{"miss", "hit"} {
		want := fields{"docker.io", "team/app", wantCache, "manifest", "alice"}
		if manifests[i] != want {
			t.Errorf("manifest GET #%d logged %+v, want %+v", i+1, manifests[i], want)
		}
	}
	// The login: the token endpoint, which names no repository in its
	// path, and has no cache outcome; the account is the one that logged in.
	if token == nil {
		t.Fatal("no token request logged")
	}
	if want := (fields{"docker.io", "", "none", "token", "alice"}); *token != want {
		t.Errorf("token request logged %+v, want %+v", *token, want)
	}
}
