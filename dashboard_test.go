package dockerproxy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// dashboardQueries returns every PromQL query of a Grafana dashboard: its
// panels' targets (rows' nested panels too) and its query variables.
func dashboardQueries(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string
		Targets []struct{ Expr string }
		Panels  []json.RawMessage
	}
	var dash struct {
		Panels     []json.RawMessage
		Templating struct {
			List []struct {
				Type  string
				Query json.RawMessage
			}
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var exprs []string
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: panel: %v", path, err)
			}
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					t.Errorf("%s: panel %q has a target without a query", path, p.Title)
				}
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("%s: variable query: %v", path, err)
		}
		exprs = append(exprs, q.Query)
	}
	return exprs
}

var metricName = regexp.MustCompile(`\bcaddy_[a-z0-9_]+`)

// unknownMetrics returns the problems of queries against the metric names
// a scrape has: a name it lacks, or a query that names no metric of the
// proxy (and could then name anything).
func unknownMetrics(exprs []string, scraped map[string]bool) []string {
	var problems []string
	for _, e := range exprs {
		names := metricName.FindAllString(e, -1)
		if len(names) == 0 {
			problems = append(problems, "names no caddy_ metric: "+e)
		}
		for _, n := range names {
			if !scraped[n] {
				problems = append(problems, n+" (in "+e+")")
			}
		}
	}
	return problems
}

// TestDashboardQueriesNameScrapedMetrics: every query of the Grafana
// dashboard names metrics that a real scrape has after traffic (a pull
// through a cache, a scheduled prefetch), and the check catches a made-up name; the README
// documents the scrape's metrics, all of them.
func TestDashboardQueriesNameScrapedMetrics(t *testing.T) {
	exprs := dashboardQueries(t, "deploy/grafana/docker_proxy.json")
	if len(exprs) < 10 {
		t.Fatalf("the dashboard has %d queries", len(exprs))
	}
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 4096)
	up.PushRandomImage(t, "team/prefetched", "1", 1, 1024)
	e := startProxy(t, up, `http://:{PORT} {
	handle /metrics {
		metrics
	}
	handle {
		docker_proxy {UPSTREAM} {
			cache {DIR}/cache
			prefetch {
				interval 1h
				images `+up.Host+`/team/prefetched:1
			}
		}
	}
}`)
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatal(err)
	}
	scraped := map[string]bool{}
	waitUntil(t, "the pull's fills counted", func() bool {
		for _, s := range e.scrape("docker.example.test") {
			scraped[s.name] = true
		}
		return scraped["caddy_docker_proxy_fill_size_bytes_bucket"] && scraped["caddy_docker_proxy_prefetch_images_total"]
	})
	if problems := unknownMetrics(exprs, scraped); len(problems) > 0 {
		t.Errorf("dashboard queries name metrics the scrape lacks:\n%s", strings.Join(problems, "\n"))
	}
	// The README's section "Metrics" names each metric of the scrape, and
	// no other.
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "\n## Metrics\n")
	section, _, _ = strings.Cut(section, "\n## ")
	documented := map[string]bool{}
	for _, n := range metricName.FindAllString(section, -1) {
		documented[n] = true
		if !scraped[n] && !scraped[n+"_bucket"] {
			t.Errorf("README's Metrics names %s, which the scrape lacks", n)
		}
	}
	for n := range scraped {
		base := n
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(n, suffix); ok && scraped[b+"_bucket"] {
				base = b
			}
		}
		if strings.HasPrefix(base, "caddy_docker_proxy_") && !documented[base] {
			t.Errorf("the scrape has %s, which README's Metrics does not name", base)
		}
	}

	// The check itself: a made-up name and a query without one are caught.
	madeUp := []string{`rate(caddy_docker_proxy_responses_totl[5m])`, `up`}
	if got := unknownMetrics(madeUp, scraped); len(got) != 2 || !slices.ContainsFunc(got, func(p string) bool { return strings.HasPrefix(p, "caddy_docker_proxy_responses_totl ") }) {
		t.Errorf("made-up queries: problems %q, want one for each", got)
	}
}
