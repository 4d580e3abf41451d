package dockerproxy_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// sample is one series of a /metrics scrape.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// scrape reads Caddy's /metrics (a metrics handler at /metrics on host)
// in the Prometheus text format.
func (e *proxyEnv) scrape(host string) []sample {
	e.t.Helper()
	resp, body := e.do("GET", host, "/metrics", nil)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	var out []sample
	for _, l := range strings.Split(body, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		series, value, ok := strings.Cut(l, " ")
		if !ok {
			e.t.Fatalf("metric line %q", l)
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			e.t.Fatalf("metric line %q: %v", l, err)
		}
		s := sample{name: series, labels: map[string]string{}, value: v}
		if name, rest, ok := strings.Cut(series, "{"); ok {
			s.name = name
			for _, pair := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
				k, v, ok := strings.Cut(pair, "=")
				if !ok {
					e.t.Fatalf("metric line %q", l)
				}
				s.labels[k] = strings.Trim(v, `"`)
			}
		}
		out = append(out, s)
	}
	return out
}

// sum adds the values of the series called name whose labels include
// every one of want ("k=v" pairs).
func sum(samples []sample, name string, want ...string) float64 {
	total := 0.0
	for _, s := range samples {
		if s.name != name || !hasLabels(s, want) {
			continue
		}
		total += s.value
	}
	return total
}

func hasLabels(s sample, want []string) bool {
	for _, kv := range want {
		k, v, _ := strings.Cut(kv, "=")
		if got, ok := s.labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// responseCounts reads caddy_docker_proxy_responses_total from Caddy's
// /metrics, summed by the cache label.
func (e *proxyEnv) responseCounts() map[string]float64 {
	e.t.Helper()
	counts := map[string]float64{}
	for _, s := range e.scrape("docker.example.test") {
		if s.name == "caddy_docker_proxy_responses_total" {
			counts[s.labels["cache"]] += s.value
		}
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

// TestMetricsCountCacheOutcomes: two pulls of an image, the first from
// the upstream, the second from the cache, counted by kind under the
// upstream's name.
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
	const name = "caddy_docker_proxy_responses_total"
	upstream := "upstream=" + up.Host
	wants := []struct {
		labels []string
		want   float64
	}{
		{[]string{upstream, "kind=manifest", "cache=miss"}, 1},
		{[]string{upstream, "kind=blob", "cache=miss"}, 2},
		{[]string{upstream, "kind=manifest", "cache=hit"}, 1},
		{[]string{upstream, "kind=blob", "cache=hit"}, 2},
	}
	// A response is counted just after the client has it: wait for the
	// last one (a state, not a time).
	var samples []sample
	waitUntil(t, "the second pull counted", func() bool {
		samples = e.scrape("docker.example.test")
		return sum(samples, name, upstream, "cache=hit") >= 3
	})
	for _, w := range wants {
		if got := sum(samples, name, w.labels...); got != w.want {
			t.Errorf("%s%v = %v, want %v", name, w.labels, got, w.want)
		}
	}
}
