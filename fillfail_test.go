package dockerproxy_test

import (
	"os"
	"strings"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestFillFailuresAreCountedAndLogged: through Caddy, a blob the upstream
// cuts short and one it corrupts each abort the client, log one warning
// and count once in caddy_docker_proxy_fill_failures_total, by upstream
// and reason.
func TestFillFailuresAreCountedAndLogged(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	const size = 1 << 20
	_, cut := up.PushGeneratedImage(t, "team/cut", "1", 11, size)
	_, bad := up.PushGeneratedImage(t, "team/bad", "1", 12, size)
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
}`)
	// The counters live as long as the process: this test counts what it
	// adds to them.
	const failures = "caddy_docker_proxy_fill_failures_total"
	reasons := []string{"short_body", "digest_mismatch", "stalled"}
	count := func() map[string]float64 {
		samples := e.scrape("docker.example.test")
		n := map[string]float64{}
		for _, r := range reasons {
			n[r] = sum(samples, failures, "upstream=docker.io", "reason="+r)
		}
		return n
	}
	before := count()
	up.Faults.CutBlobsAfter(size / 2)
	tok := anonymousToken(t, e, "docker.example.test", "team/cut")
	if _, n, _, err := e.readBlob("/v2/team/cut/blobs/"+cut.Digest.String(), tok, nil); err == nil {
		t.Fatalf("a cut blob ended cleanly after %d bytes", n)
	}
	up.Faults.CutBlobsAfter(-1)
	up.Faults.CorruptBlobs(true)
	tok = anonymousToken(t, e, "docker.example.test", "team/bad")
	if _, n, _, err := e.readBlob("/v2/team/bad/blobs/"+bad.Digest.String(), tok, nil); err == nil {
		t.Fatalf("a corrupt blob ended cleanly after %d bytes", n)
	}

	want := map[string]float64{"short_body": 1, "digest_mismatch": 1, "stalled": 0}
	// The count comes from the fill's goroutine, which may end just after
	// the client saw the failure: wait for it (a state, not a time).
	var after map[string]float64
	waitUntil(t, "both failures counted", func() bool {
		after = count()
		return after["short_body"]-before["short_body"] >= 1 && after["digest_mismatch"]-before["digest_mismatch"] >= 1
	})
	for _, r := range reasons {
		if got := after[r] - before[r]; got != want[r] {
			t.Errorf("%s{upstream=docker.io,reason=%s} counted %v, want %v", failures, r, got, want[r])
		}
	}
	log, err := os.ReadFile(e.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{cut.Digest.String(), bad.Digest.String()} {
		n := 0
		for _, l := range strings.Split(string(log), "\n") {
			if strings.Contains(l, "blob fill failed") && strings.Contains(l, d) {
				n++
				if !strings.Contains(l, `"level":"warn"`) || strings.Contains(l, up.ObjectStoreURL) {
					t.Errorf("fill warning: %s", l)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d warnings for %s, want 1", n, d)
		}
	}
}
