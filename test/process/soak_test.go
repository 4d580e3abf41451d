//go:build linux

package process

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// Soak parameters: bounded in count and in time, whichever comes first.
const (
	soakConns       = 500              // concurrent connections, one per worker
	soakPerConn     = 200              // requests per worker at most
	soakFor         = 45 * time.Second // and no longer than this
	soakColdBlobs   = 300              // distinct blobs for misses
	soakJoinBlobs   = 5                // blobs every worker asks for first: joins
	soakJoinSize    = 4 << 20
	goroutineSlack  = 40       // over the baseline, once clients are gone
	fdSlack         = 40       // the same for open file descriptors
	heapSlack       = 64 << 20 // live heap after GC, over the baseline
	soakPrivateRepo = "team/private"
)

// TestSoak holds about 500 concurrent connections against one Caddy
// process for a bounded time, mixing cache hits, misses, joins (many
// clients asking at once for a blob nobody has fetched), token requests
// and refusals (a private repository asked anonymously, invalid names and
// digests), every answer checked. Then, with the clients gone, the
// process's goroutines, open file descriptors and live heap must come back
// near where they were before: nothing leaks per request or connection.
// The bounds are generous and nothing about time is asserted.
func TestSoak(t *testing.T) {
	skipUnlessLong(t)
	up := testupstream.Start(t, testupstream.Options{})
	hot := up.PushRandomImage(t, "team/hot", "1", 2, 32<<10)
	cold := up.PushRandomImage(t, "team/cold", "1", soakColdBlobs, 8<<10)
	var joins []*testupstream.GeneratedBlob
	for i := range soakJoinBlobs {
		_, g := up.PushGeneratedImage(t, fmt.Sprintf("team/join%d", i), "1", int64(500+i), soakJoinSize)
		joins = append(joins, g)
	}
	up.SetPrivate(soakPrivateRepo, "alice", "alice-pw")
	up.PushRandomImage(t, soakPrivateRepo, "1", 1, 1024)

	// Idle upstream connections are a bounded pool (32 per host) that
	// Caddy closes after keepalive (2 min by default): shorter here, so
	// that their end is seen within the test.
	p := startCaddy(t, t.TempDir(), siteConfig{Upstream: up.URL, CacheDir: filepath.Join(t.TempDir(), "cache"), TagTTL: "5m", MaxSize: "4GiB",
		Transport: "transport http {\n\t\t\tkeepalive 2s\n\t\t}"})
	hotLayers := layerDigests(t, hot)
	coldLayers := layerDigests(t, cold)
	hotManifest, _ := hot.Digest()

	// Warm up the paths once, so that the baseline holds what any
	// running proxy holds (pools, the manifest cache, upstream tokens).
	warm := newClient(p)
	for _, d := range hotLayers {
		if f := warm.fetch("team/hot", "blobs/"+d); f.Err != nil || f.Status != http.StatusOK || f.Digest != d {
			t.Fatalf("warm-up: %+v", f)
		}
	}
	warm.hc.CloseIdleConnections()
	base := p.resources(t)
	t.Logf("baseline: %s", base)

	var (
		next     atomic.Int64 // the next cold blob to ask for
		stats    sync.Map     // outcome -> *atomic.Int64
		failures atomic.Int64
		failMu   sync.Mutex
		failLog  []string
	)
	count := func(outcome string) {
		v, _ := stats.LoadOrStore(outcome, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			failMu.Lock()
			failLog = append(failLog, fmt.Sprintf(format, args...))
			failMu.Unlock()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), soakFor)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	transports := make([]*http.Transport, soakConns)
	for w := range soakConns {
		// One connection per worker: MaxConnsPerHost 1 and keep-alive.
		tr := &http.Transport{DisableCompression: true, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
			DialContext: (&net.Dialer{Timeout: 30 * time.Second}).DialContext}
		transports[w] = tr
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &soakClient{base: p.URL(""), hc: &http.Client{Transport: tr}, tokens: map[string]string{}}
			for i := 0; i < soakPerConn && ctx.Err() == nil; i++ {
				kind := (w + i) % 8
				if i == 0 {
					kind = -1 // every worker's first request: a join
				}
				outcome, err := s.one(ctx, kind, w, hotLayers, coldLayers, hotManifest.String(), joins, &next)
				switch {
				case err != nil && ctx.Err() != nil:
					return // the time is up mid-request
				case err != nil:
					fail("worker %d, request %d (kind %d): %v", w, i, kind, err)
				default:
					count(outcome)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, tr := range transports {
		tr.CloseIdleConnections()
	}
	total := int64(0)
	var summary []string
	stats.Range(func(k, v any) bool {
		n := v.(*atomic.Int64).Load()
		total += n
		summary = append(summary, fmt.Sprintf("%s %d", k, n))
		return true
	})
	t.Logf("%d requests over %d connections in %v: %s", total, soakConns, elapsed.Round(time.Second), strings.Join(summary, ", "))
	if n := failures.Load(); n > 0 {
		t.Errorf("%d requests failed; first ones:\n%s", n, strings.Join(failLog, "\n"))
	}

	// The clients are gone: what they cost must be released. Poll for
	// that state (the guard only stops a hang).
	var after resources
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		after = p.resources(t)
		if after.goroutines <= base.goroutines+goroutineSlack && after.fds <= base.fds+fdSlack {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("not back near the baseline: %s (baseline %s)", after, base)
			p.dumpGoroutines(t)
			break
		}
	}
	t.Logf("after:    %s", after)
	if after.heap > base.heap+heapSlack {
		t.Errorf("live heap after GC %d MiB, baseline %d MiB: more than %d MiB kept", after.heap>>20, base.heap>>20, heapSlack>>20)
	}
	if !p.running() {
		t.Fatal("caddy exited during the soak")
	}
}

func layerDigests(t *testing.T, img v1.Image) []string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var ds []string
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d.String())
	}
	return ds
}

// soakClient is one worker: its own connection, its own tokens.
type soakClient struct {
	base   string
	hc     *http.Client
	tokens map[string]string
}

func (s *soakClient) do(ctx context.Context, method, path, token, accept string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, nil)
	if err != nil {
		return nil, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// token asks the proxy's realm for an anonymous pull token for repo (once
// per repository and worker, as a client does).
func (s *soakClient) token(ctx context.Context, repo string) (string, error) {
	if tok, ok := s.tokens[repo]; ok {
		return tok, nil
	}
	tok, err := s.newToken(ctx, repo)
	if err == nil {
		s.tokens[repo] = tok
	}
	return tok, err
}

func (s *soakClient) newToken(ctx context.Context, repo string) (string, error) {
	resp, body, err := s.do(ctx, "GET", "/v2/auth?scope=repository:"+repo+":pull", "", "")
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token for %s: %s %s", repo, resp.Status, body)
	}
	_, rest, ok := strings.Cut(string(body), `"token":"`)
	tok, _, _ := strings.Cut(rest, `"`)
	if !ok || tok == "" {
		return "", fmt.Errorf("token for %s: %s", repo, body)
	}
	return tok, nil
}

// blob GETs a blob and checks its bytes against its digest.
func (s *soakClient) blob(ctx context.Context, repo, d string) (string, error) {
	tok, err := s.token(ctx, repo)
	if err != nil {
		return "", err
	}
	resp, body, err := s.do(ctx, "GET", "/v2/"+repo+"/blobs/"+d, tok, "")
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(body)
	if resp.StatusCode != http.StatusOK || "sha256:"+hex.EncodeToString(sum[:]) != d {
		return "", fmt.Errorf("blob %s: %s, %d bytes, Cache-Status %q", d, resp.Status, len(body), resp.Header.Get("Cache-Status"))
	}
	return cacheOutcome(resp.Header.Get("Cache-Status")), nil
}

func cacheOutcome(cs string) string {
	switch {
	case strings.Contains(cs, "collapsed"):
		return "joined"
	case strings.Contains(cs, "; hit"):
		return "hit"
	case strings.Contains(cs, "fwd=miss"):
		return "miss"
	}
	return "other(" + cs + ")"
}

// one makes one request of the given kind and checks its answer.
func (s *soakClient) one(ctx context.Context, kind, worker int, hot, cold []string, hotManifest string, joins []*testupstream.GeneratedBlob, next *atomic.Int64) (string, error) {
	switch kind {
	case -1: // a join: everyone starts with one of a few big new blobs
		g := joins[worker%len(joins)]
		o, err := s.blob(ctx, fmt.Sprintf("team/join%d", worker%len(joins)), g.Digest.String())
		return "join:" + o, err
	case 0, 1: // a hit
		o, err := s.blob(ctx, "team/hot", hot[(worker+kind)%len(hot)])
		return "blob:" + o, err
	case 2: // a manifest by tag
		tok, err := s.token(ctx, "team/hot")
		if err != nil {
			return "", err
		}
		resp, _, err := s.do(ctx, "GET", "/v2/team/hot/manifests/1", tok, manifestAccept)
		if err != nil {
			return "", err
		}
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != hotManifest {
			return "", fmt.Errorf("manifest: %s, digest %s", resp.Status, resp.Header.Get("Docker-Content-Digest"))
		}
		return "manifest:" + cacheOutcome(resp.Header.Get("Cache-Status")), nil
	case 3: // a miss (a hit once every cold blob was asked for)
		i := next.Add(1) - 1
		o, err := s.blob(ctx, "team/cold", cold[i%int64(len(cold))])
		return "blob:" + o, err
	case 4: // a token request
		if _, err := s.newToken(ctx, "team/hot"); err != nil {
			return "", err
		}
		return "token", nil
	case 5: // a private repository, anonymously: refused
		tok, err := s.token(ctx, soakPrivateRepo)
		if err != nil {
			return "", err
		}
		resp, body, err := s.do(ctx, "GET", "/v2/"+soakPrivateRepo+"/manifests/1", tok, manifestAccept)
		if err != nil {
			return "", err
		}
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
			return "", fmt.Errorf("anonymous private manifest: %s %s", resp.Status, body)
		}
		return "refused:private", nil
	case 6: // an invalid name: refused before anything goes upstream
		resp, body, err := s.do(ctx, "GET", "/v2/Team/../x/manifests/1", "", "")
		if err != nil {
			return "", err
		}
		if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"errors"`) {
			return "", fmt.Errorf("invalid name: %s %s", resp.Status, body)
		}
		return "refused:name", nil
	default: // an invalid digest
		resp, body, err := s.do(ctx, "GET", "/v2/team/hot/blobs/sha256:zzzz", "", "")
		if err != nil {
			return "", err
		}
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "DIGEST_INVALID") {
			return "", fmt.Errorf("invalid digest: %s %s", resp.Status, body)
		}
		return "refused:digest", nil
	}
}

// resources is what a process holds: goroutines, open descriptors, the
// live heap after a collection, and its resident set.
type resources struct {
	goroutines, fds int
	heap, rss       int64
}

func (r resources) String() string {
	return fmt.Sprintf("%d goroutines, %d open fds, live heap %.1f MiB, RSS %.1f MiB",
		r.goroutines, r.fds, float64(r.heap)/(1<<20), float64(r.rss)/(1<<20))
}

// resources reads them through the admin endpoint's pprof handlers (the
// heap one collects garbage first) and /proc.
func (p *caddyProc) resources(t *testing.T) resources {
	t.Helper()
	admin := "http://127.0.0.1:" + p.AdminPort
	var r resources
	// Twice: sync.Pool keeps its contents through one collection.
	for range 2 {
		resp, err := http.Get(admin + "/debug/pprof/heap?gc=1&debug=1")
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			// "# HeapAlloc = 1234" in the runtime.MemStats section.
			if v, ok := strings.CutPrefix(sc.Text(), "# HeapAlloc = "); ok {
				r.heap, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		resp.Body.Close()
	}
	resp, err := http.Get(admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	first, _ := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	// "goroutine profile: total 42"
	if _, n, ok := strings.Cut(strings.TrimSpace(first), "total "); ok {
		r.goroutines, _ = strconv.Atoi(n)
	} else {
		t.Fatalf("goroutine profile starts %q", first)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.PID))
	if err != nil {
		t.Fatal(err)
	}
	r.fds = len(fds)
	r.rss = p.memStatus()["VmRSS"]
	if r.heap == 0 {
		t.Fatal("no HeapAlloc in the heap profile")
	}
	return r
}

// dumpGoroutines logs the process's goroutines, grouped by stack.
func (p *caddyProc) dumpGoroutines(t *testing.T) {
	resp, err := http.Get("http://127.0.0.1:" + p.AdminPort + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Log(err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 32<<10))
	t.Logf("goroutines:\n%s", b)
}
