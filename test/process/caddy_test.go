//go:build linux

package process

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The Caddy binary is built once per test run, into a directory TestMain
// removes at the end.
var (
	buildOnce sync.Once
	buildDir  string
	caddyBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// skipUnlessLong skips process tests under -short.
func skipUnlessLong(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts Caddy as a separate process: skipped under -short")
	}
}

// caddyBinary builds ./cmd/caddy (the module root is two levels up from
// this package) the first time a test needs it.
func caddyBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := filepath.Abs(filepath.Join("..", ".."))
		if err != nil {
			buildErr = err
			return
		}
		buildDir, err = os.MkdirTemp("", "docker-proxy-process-test-")
		if err != nil {
			buildErr = err
			return
		}
		bin := filepath.Join(buildDir, "caddy")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
			return
		}
		caddyBin = bin
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return caddyBin
}

// Ports handed out in this test run: Caddy listens with SO_REUSEPORT, so a
// port must never serve two Caddy instances, not even one after the other.
var (
	portsMu   sync.Mutex
	portsUsed = map[string]bool{}
)

// freePort returns a port nothing listens on now and that no earlier call
// returned.
func freePort(t *testing.T) string {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(l.Addr().String())
		l.Close()
		portsMu.Lock()
		seen := portsUsed[port]
		portsUsed[port] = true
		portsMu.Unlock()
		if !seen {
			return port
		}
	}
	t.Fatal("no fresh port")
	return ""
}

// siteConfig is what changes between the Caddyfiles of a test.
type siteConfig struct {
	Upstream string // the test upstream's URL
	CacheDir string
	TagTTL   string // e.g. "5m"
	MaxSize  string // e.g. "4GiB"
	// Extra is more directives for the site block (e.g. a header).
	Extra string
	// Transport is a transport block for docker_proxy (e.g. "transport
	// http {\n keepalive 1s\n}"); "" keeps the default.
	Transport string
}

// caddyfile renders a Caddyfile: one site on 127.0.0.1:port, the admin
// endpoint on 127.0.0.1:adminPort (so `caddy reload --address` works).
func caddyfile(port, adminPort string, c siteConfig) string {
	extra := ""
	if c.Extra != "" {
		extra = "\t" + c.Extra + "\n"
	}
	transport := ""
	if c.Transport != "" {
		transport = "\t\t" + c.Transport + "\n"
	}
	return fmt.Sprintf(`{
	admin 127.0.0.1:%[2]s
	skip_install_trust
	auto_https off
	persist_config off
	log {
		output stderr
		level DEBUG
	}
}

http://127.0.0.1:%[1]s {
%[7]s	docker_proxy %[3]s {
		cache %[4]s {
			tag_ttl %[5]s
			max_size %[6]s
		}
%[8]s	}
}
`, port, adminPort, c.Upstream, c.CacheDir, c.TagTTL, c.MaxSize, extra, transport)
}

// caddyProc is one Caddy child process.
type caddyProc struct {
	t          *testing.T
	bin        string
	Port       string
	AdminPort  string
	PID        int
	env        []string
	dir        string // config and log files live here
	configPath string
	logPath    string
	cmd        *exec.Cmd
	exited     chan struct{}
	waitErr    error
}

// caddyEnv is the environment every Caddy of one test shares: its own
// XDG data and config directories (the auth key lives there), so that a
// restart finds what the previous process left.
func caddyEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "XDG_DATA_HOME", "XDG_CONFIG_HOME", "HOME", "GOGC", "GOMEMLIMIT":
			// Ours, or would change what the memory tests measure.
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"HOME="+home,
		"XDG_DATA_HOME="+filepath.Join(home, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"),
	)
}

// startCaddy runs `caddy run` on fresh ports with the site config c and
// waits until it answers HTTP. home is the test's Caddy home (see
// caddyEnv); the process is killed at the end of the test if it still runs.
func startCaddy(t *testing.T, home string, c siteConfig) *caddyProc {
	t.Helper()
	p := &caddyProc{
		t:         t,
		bin:       caddyBinary(t),
		Port:      freePort(t),
		AdminPort: freePort(t),
		env:       caddyEnv(home),
		dir:       t.TempDir(),
		exited:    make(chan struct{}),
	}
	p.configPath = filepath.Join(p.dir, "Caddyfile")
	p.logPath = filepath.Join(p.dir, "caddy.log")
	if err := os.WriteFile(p.configPath, []byte(caddyfile(p.Port, p.AdminPort, c)), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(p.bin, "run", "--config", p.configPath, "--adapter", "caddyfile")
	p.cmd.Env = p.env
	p.cmd.Dir = p.dir
	p.cmd.Stdout = logFile
	p.cmd.Stderr = logFile
	// If the test binary dies, Caddy goes with it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting caddy: %v", err)
	}
	p.PID = p.cmd.Process.Pid
	go func() {
		p.waitErr = p.cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			p.dumpLog()
		}
	})
	p.waitReady()
	t.Logf("caddy pid %d on port %s (admin %s)", p.PID, p.Port, p.AdminPort)
	return p
}

// running reports whether the process has not exited yet.
func (p *caddyProc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// waitReady polls the site until it answers. The deadline only guards
// against a hang; it is not a performance assertion.
func (p *caddyProc) waitReady() {
	p.t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if !p.running() {
			p.dumpLog()
			p.t.Fatalf("caddy exited before it was ready: %v", p.waitErr)
		}
		resp, err := c.Get(p.URL("/v2/"))
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("caddy not answering on port %s: %v", p.Port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// URL is the proxy's address for path.
func (p *caddyProc) URL(path string) string { return "http://127.0.0.1:" + p.Port + path }

// Kill sends SIGKILL to this process (by its PID) and waits until it is gone.
func (p *caddyProc) Kill() {
	p.t.Helper()
	if !p.running() {
		p.t.Fatalf("caddy (pid %d) already exited: %v", p.PID, p.waitErr)
	}
	p.kill()
}

func (p *caddyProc) kill() {
	if p.running() {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	<-p.exited
}

// Reload runs `caddy reload` against this process's admin endpoint with
// the site config c (same ports).
func (p *caddyProc) Reload(c siteConfig) {
	p.t.Helper()
	path := filepath.Join(p.dir, "Caddyfile.reload")
	if err := os.WriteFile(path, []byte(caddyfile(p.Port, p.AdminPort, c)), 0o644); err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(p.bin, "reload", "--config", path, "--adapter", "caddyfile", "--address", "127.0.0.1:"+p.AdminPort)
	cmd.Env = p.env
	cmd.Dir = p.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		p.t.Fatalf("caddy reload: %v\n%s", err, out)
	}
}

// memStatus returns the memory fields (in bytes) of /proc/<pid>/status:
// VmHWM (peak resident set size), VmRSS, RssAnon, RssFile, ...
func (p *caddyProc) memStatus() map[string]int64 {
	p.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID))
	if err != nil {
		p.t.Fatal(err)
	}
	fields := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		f := strings.Fields(rest)
		if !ok || len(f) != 2 || f[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			p.t.Fatalf("unexpected line %q in /proc/%d/status", sc.Text(), p.PID)
		}
		fields[name] = kb << 10
	}
	if _, ok := fields["VmHWM"]; !ok {
		p.t.Fatalf("no VmHWM in /proc/%d/status", p.PID)
	}
	return fields
}

// VmHWM is the process's peak resident set size in bytes. It logs the
// current breakdown too.
func (p *caddyProc) VmHWM() int64 {
	p.t.Helper()
	m := p.memStatus()
	mib := func(k string) float64 { return float64(m[k]) / (1 << 20) }
	p.t.Logf("caddy pid %d: VmHWM %.1f MiB, VmRSS %.1f MiB (RssAnon %.1f, RssFile %.1f)",
		p.PID, mib("VmHWM"), mib("VmRSS"), mib("RssAnon"), mib("RssFile"))
	return m["VmHWM"]
}

// goMemStats is part of the Go runtime's memory statistics of the Caddy
// process, from expvar on its admin endpoint (/debug/vars).
type goMemStats struct {
	TotalAlloc uint64 // bytes allocated on the heap, cumulative
	NumGC      uint32
	HeapSys    uint64
}

func (p *caddyProc) memStats() goMemStats {
	p.t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + p.AdminPort + "/debug/vars")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	var vars struct {
		MemStats *goMemStats `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&vars); err != nil || vars.MemStats == nil {
		p.t.Fatalf("admin /debug/vars: status %d, no memstats (%v)", resp.StatusCode, err)
	}
	return *vars.MemStats
}

// LogContains reports whether the process's log holds s.
func (p *caddyProc) LogContains(s string) bool {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		p.t.Fatal(err)
	}
	return bytes.Contains(b, []byte(s))
}

func (p *caddyProc) dumpLog() {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		p.t.Logf("caddy log: %v", err)
		return
	}
	const max = 16 << 10
	if len(b) > max {
		b = append([]byte("...\n"), b[len(b)-max:]...)
	}
	p.t.Logf("caddy (pid %d) log:\n%s", p.PID, b)
}

// client talks to one Caddy like a registry client: an anonymous token
// from the proxy's /v2/auth per repository, then Bearer requests.
type client struct {
	base string
	hc   *http.Client

	mu     sync.Mutex
	tokens map[string]string
}

func newClient(p *caddyProc) *client {
	tr := &http.Transport{
		Proxy:               nil,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
	}
	return &client{base: p.URL(""), hc: &http.Client{Transport: tr}, tokens: map[string]string{}}
}

// token returns an anonymous pull token for repo from the proxy's realm.
func (c *client) token(repo string) (string, error) {
	c.mu.Lock()
	tok, ok := c.tokens[repo]
	c.mu.Unlock()
	if ok {
		return tok, nil
	}
	resp, err := c.hc.Get(c.base + "/v2/auth?scope=repository:" + repo + ":pull")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token for %s: %d %s", repo, resp.StatusCode, body)
	}
	var got struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(body, &got); err != nil || got.Token == "" {
		return "", fmt.Errorf("token for %s: bad answer %q (%v)", repo, body, err)
	}
	c.mu.Lock()
	c.tokens[repo] = got.Token
	c.mu.Unlock()
	return got.Token, nil
}

// manifestAccept is what a pull sends; tag records are per Accept, so
// every manifest request of the tests uses the same value.
const manifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, " +
	"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// get sends GET /v2/<repo>/<rest> with a token and returns the response
// with its body unread (the caller closes it).
func (c *client) get(ctx context.Context, repo, rest string) (*http.Response, error) {
	tok, err := c.token(repo)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v2/"+repo+"/"+rest, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if strings.HasPrefix(rest, "manifests/") {
		req.Header.Set("Accept", manifestAccept)
	}
	return c.hc.Do(req)
}

// fetched is the outcome of one GET read to its end.
type fetched struct {
	Status      int
	CacheStatus string
	Header      http.Header
	N           int64  // body bytes read
	Digest      string // "sha256:<hex>" of the body, if hashed
	Err         error  // transport or body read error
}

// fetch GETs /v2/<repo>/<rest> and reads the whole body, hashing it.
func (c *client) fetch(repo, rest string) fetched {
	resp, err := c.get(context.Background(), repo, rest)
	if err != nil {
		return fetched{Err: err}
	}
	defer resp.Body.Close()
	return readBody(resp, true)
}

// readBody reads resp's body to the end, hashing it if hash is set.
func readBody(resp *http.Response, hash bool) fetched {
	f := fetched{Status: resp.StatusCode, CacheStatus: resp.Header.Get("Cache-Status"), Header: resp.Header}
	var w io.Writer = io.Discard
	h := sha256.New()
	if hash {
		w = h
	}
	buf := make([]byte, 256<<10)
	f.N, f.Err = io.CopyBuffer(w, resp.Body, buf)
	if hash {
		f.Digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	}
	return f
}

// Cache-Status values of the proxy (RFC 9211).
const (
	statusHit    = "docker_proxy; hit"
	statusMiss   = "docker_proxy; fwd=miss"
	statusJoined = "docker_proxy; fwd=miss; collapsed"
)

// wantComplete checks that f is a 200 with exactly size bytes hashing to
// digest and the given Cache-Status.
func wantComplete(t *testing.T, what string, f fetched, digest string, size int64, cacheStatus string) {
	t.Helper()
	switch {
	case f.Err != nil:
		t.Errorf("%s: %v (after %d bytes, Cache-Status %q)", what, f.Err, f.N, f.CacheStatus)
	case f.Status != http.StatusOK:
		t.Errorf("%s: status %d, want 200", what, f.Status)
	case f.N != size:
		t.Errorf("%s: %d bytes, want %d", what, f.N, size)
	case f.Digest != "" && f.Digest != digest:
		t.Errorf("%s: bytes hash to %s, want %s", what, f.Digest, digest)
	}
	if cacheStatus != "" && f.CacheStatus != cacheStatus {
		t.Errorf("%s: Cache-Status %q, want %q", what, f.CacheStatus, cacheStatus)
	}
}

// waitFor polls cond until it holds. The deadline only guards against a
// hang (it fails the test with what), it is not a performance assertion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tempFiles lists the regular files in dir (not recursive), name -> size.
// A missing dir is an empty list.
func tempFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	des, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]int64{}
	for _, de := range des {
		info, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		if info.Mode().IsRegular() {
			files[de.Name()] = info.Size()
		}
	}
	return files
}

// filesNamed returns the paths under root whose base name contains s.
func filesNamed(t *testing.T, root, s string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(d.Name(), s) {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
