package dockerproxy_test

import (
	"os"
	"strings"
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestFillFailuresAreCountedAndLogged: through Caddy, a blob the upstream
// cuts short and one it corrupts each abort the client, log one warning
// and count once in caddy_docker_proxy_fill_failures_total, by reason.
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

	wants := []string{
		`caddy_docker_proxy_fill_failures_total{reason="short_body"} 1`,
		`caddy_docker_proxy_fill_failures_total{reason="digest_mismatch"} 1`,
		`caddy_docker_proxy_fill_failures_total{reason="stalled"} 0`,
	}
	// The count comes from the fill's goroutine, which may end just after
	// the client saw the failure: wait for it (a state, not a time).
	var body string
	waitUntil(t, "both failures counted", func() bool {
		_, body = e.do("GET", "docker.example.test", "/metrics", nil)
		return strings.Contains(body, wants[0]) && strings.Contains(body, wants[1])
	})
	for _, want := range wants {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(body, "fill_failures"))
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
