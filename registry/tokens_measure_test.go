package registry

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestMeasureAnonymousNames measures what anonymous pulls of many
// repository names cost: token requests to the upstream's realm and the
// heap the proxy keeps afterwards. The upstream runs in a process of its
// own, so the heap is the proxy's. It asserts nothing (numbers belong in
// reports, not in pass/fail tests) and runs only when
// DOCKERPROXY_MEASURE_NAMES gives the number of names.
func TestMeasureAnonymousNames(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("DOCKERPROXY_MEASURE_NAMES"))
	if n <= 0 {
		t.Skip("set DOCKERPROXY_MEASURE_NAMES=20000 to measure")
	}
	for _, wide := range []bool{false, true} {
		t.Run(fmt.Sprintf("wide=%v", wide), func(t *testing.T) {
			upURL, tokenCount := startUpstreamProcess(t, wide)
			p, srv := newTestProxyAt(t, upURL)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			get := func(name string) {
				resp, err := client.Get(srv.URL + "/v2/" + name + "/manifests/latest")
				if err != nil {
					t.Fatal(err)
				}
				drain(resp.Body)
			}
			get("warm/up")
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			tokens0 := tokenCount()
			for i := range n {
				get(fmt.Sprintf("team%d/name%d", i%100, i))
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			t.Logf("%d names: %d token requests, proxy heap %+.1f MiB (%d -> %d bytes)", n,
				tokenCount()-tokens0, float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/(1<<20),
				before.HeapAlloc, after.HeapAlloc)
			runtime.KeepAlive(p)
		})
	}
}

// newTestProxyAt is newTestProxy for an upstream given by its URL.
func newTestProxyAt(t *testing.T, upstreamURL string) (*Proxy, *httptest.Server) {
	t.Helper()
	return newTestProxy(t, &testupstream.Upstream{URL: upstreamURL}, time.Minute)
}

// startUpstreamProcess runs a test upstream in a child process (this test
// binary, as TestUpstreamProcess) and returns its URL and a function that
// reads its token request count.
func startUpstreamProcess(t *testing.T, wide bool) (string, func() int64) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestUpstreamProcess$")
	cmd.Env = append(os.Environ(), "DOCKERPROXY_UPSTREAM_PROCESS=1", "DOCKERPROXY_UPSTREAM_WIDE="+strconv.FormatBool(wide))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("upstream process: %v", err)
	}
	upURL, countURL, _ := strings.Cut(strings.TrimSpace(line), " ")
	return upURL, func() int64 {
		resp, err := http.Get(countURL)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		n, _ := strconv.ParseInt(string(b), 10, 64)
		return n
	}
}

// TestUpstreamProcess is the child of startUpstreamProcess: it serves a
// test upstream and its token count until its stdin closes.
func TestUpstreamProcess(t *testing.T) {
	if os.Getenv("DOCKERPROXY_UPSTREAM_PROCESS") == "" {
		t.Skip("the upstream of TestMeasureAnonymousNames")
	}
	// Tokens of about the size of Docker Hub's (a JWT of some 2 KB).
	up := testupstream.Start(t, testupstream.Options{TokenTTL: time.Hour, TokenBytes: 1024,
		WideAnonymousTokens: os.Getenv("DOCKERPROXY_UPSTREAM_WIDE") == "true"})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, up.Counters.TokenRequests())
	}))
	fmt.Printf("%s http://%s/\n", up.URL, l.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
}
