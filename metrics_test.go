package dockerproxy_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// responseCounts reads caddy_docker_proxy_responses_total from Caddy's
// /metrics, by label.
func (e *proxyEnv) responseCounts() map[string]float64 {
	e.t.Helper()
	_, body := e.do("GET", "docker.example.test", "/metrics", nil)
	counts := map[string]float64{}
	const prefix = `caddy_docker_proxy_responses_total{cache="`
	for _, l := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(l, prefix)
		if !ok {
			continue
		}
		label, value, ok := strings.Cut(rest, `"} `)
		if !ok {
			e.t.Fatalf("metric line %q", l)
		}
		n, err := strconv.ParseFloat(value, 64)
		if err != nil {
			e.t.Fatalf("metric line %q: %v", l, err)
		}
		counts[label] = n
	}
	return counts
}

// TestMetricsCountEachOutcome: through Caddy, each response is counted
// once in caddy_docker_proxy_responses_total under the label of its
// outcome, the one its Cache-Status names, and under no other.
func TestMetricsCountEachOutcome(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushGeneratedImage(t, "team/app", "1", 1, 64<<10)
	up.PushRandomImage(t, "team/app", "2", 1, 1024)
	_, other := up.PushGeneratedImage(t, "team/other", "1", 2, 64<<10)
	up.SetPrivate("team/secret", "alice", "alice-pw")
	secret := up.PushRandomImage(t, "team/secret", "1", 1, 1024)
	secretDigest, _ := secret.Digest()
	e := startProxy(t, up, `http://:{PORT} {
	handle /metrics {
		metrics
	}
	handle {
		docker_proxy docker.io {
			upstream docker.io {UPSTREAM}
			cache {DIR}/cache
		}
	}
}
http://quay.example.test:{PORT} {
	docker_proxy docker.io {
		upstream docker.io {UPSTREAM}
		cache off
	}
}`)
	cacheDir := filepath.Join(filepath.Dir(e.logPath), "cache")
	for _, step := range []struct {
		name            string
		before          func(t *testing.T)
		host, path      string
		wantCacheStatus string
		wantLabel       string
	}{
		{name: "miss", path: "/v2/team/app/manifests/1",
			wantCacheStatus: "docker_proxy; fwd=miss", wantLabel: "miss"},
		{name: "hit", path: "/v2/team/app/manifests/1",
			wantCacheStatus: "docker_proxy; hit", wantLabel: "hit"},
		{name: "bypass: cache off", host: "quay.example.test", path: "/v2/team/app/manifests/1",
			wantCacheStatus: "docker_proxy; fwd=bypass", wantLabel: "bypass"},
		{name: "refused", path: "/v2/team/secret/manifests/" + secretDigest.String(),
			wantCacheStatus: "docker_proxy; fwd=miss; fwd-status=401", wantLabel: "refused"},
		{name: "upstream error",
			before:          func(*testing.T) { up.Faults.SetRegistryStatus(http.StatusBadGateway) },
			path:            "/v2/team/app/manifests/2",
			wantCacheStatus: "docker_proxy; fwd=miss; fwd-status=502", wantLabel: "error"},
		{name: "cache unavailable: manifest",
			before: func(t *testing.T) {
				up.Faults.SetRegistryStatus(0)
				// The store's temporary directory replaced by a file:
				// no write gets through, even as root.
				tmp := filepath.Join(cacheDir, "tmp")
				if err := os.RemoveAll(tmp); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(tmp, []byte("not a directory"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			path:            "/v2/team/other/manifests/1",
			wantCacheStatus: "docker_proxy; fwd=bypass; detail=cache-unavailable", wantLabel: "bypass"},
		{name: "cache unavailable: blob", path: "/v2/team/other/blobs/" + other.Digest.String(),
			wantCacheStatus: "docker_proxy; fwd=bypass; detail=cache-unavailable", wantLabel: "bypass"},
	} {
		if step.before != nil {
			step.before(t)
		}
		before := e.responseCounts()
		host := step.host
		if host == "" {
			host = "docker.example.test"
		}
		resp, _ := e.do("GET", host, step.path, nil)
		if got := resp.Header.Get("Cache-Status"); got != step.wantCacheStatus {
			t.Errorf("%s: Cache-Status %q (HTTP %d), want %q", step.name, got, resp.StatusCode, step.wantCacheStatus)
		}
		// The response is counted just after the client has it: wait
		// for the count (a state, not a time), then check it is the
		// only one.
		var after map[string]float64
		waitUntil(t, step.name+" counted", func() bool {
			after = e.responseCounts()
			total := 0.0
			for label, n := range after {
				total += n - before[label]
			}
			return total >= 1
		})
		if _, ok := after[step.wantLabel]; !ok {
			t.Errorf("%s: no series for label %q", step.name, step.wantLabel)
		}
		for label, n := range after {
			want := before[label]
			if label == step.wantLabel {
				want++
			}
			if n != want {
				t.Errorf("%s: %s counted %v, want %v", step.name, label, n-before[label], want-before[label])
			}
		}
	}
}

func TestMetricsCountCacheOutcomes(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 4096)
	e := startProxy(t, up, `http://:{PORT} {
	handle /metrics {
		metrics
	}
	handle {
		docker_proxy {UPSTREAM} {
			cache {DIR}/cache
		}
	}
}`)
	for i := 0; i < 2; i++ {
		if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
			t.Fatal(err)
		}
	}
	// A response is counted just after the client has it: poll a little.
	wants := []string{`caddy_docker_proxy_responses_total{cache="hit"} 3`, `caddy_docker_proxy_responses_total{cache="miss"} 3`}
	var body string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		_, body = e.do("GET", "docker.example.test", "/metrics", nil)
		if strings.Contains(body, wants[0]) && strings.Contains(body, wants[1]) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range wants {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(body, "docker_proxy"))
		}
	}
}
