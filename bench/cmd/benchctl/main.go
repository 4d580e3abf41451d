// Command benchctl is docker_proxy's benchmark harness. bench/run builds
// it and the binaries it needs, then runs it; see bench/README.md.
//
//	benchctl run -work DIR -pidfile FILE -caddy BIN -nginx BIN -registry BIN [-wrk BIN] -out DIR [-doc FILE]
//	benchctl counter -listen ADDR -target URL [-rate BYTES/S]
//
// Everything runs on loopback: an upstream registry (distribution) with
// generated images behind a counting proxy, docker_proxy in Caddy, and the
// systems it is compared with (Caddy file_server, nginx static, nginx
// proxy_cache, distribution in proxy mode). Each measurement interleaves
// the compared systems and reports ratios, so that the noise of a shared
// machine hits all of them alike.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type Config struct {
	Work, PIDFile, Caddy, Nginx, Registry, Wrk, Out, Doc, Cmdline, Root string
	Quick                                                               bool
	Only, Skip                                                          map[string]bool
	Reps                                                                int
	Profile                                                             bool
	ProfileSecs                                                         int
	Budget                                                              time.Duration
	UpstreamMBps                                                        float64
	ColdWANMBps                                                         float64
	CaddyWriteChunk                                                     string
	Fanout                                                              []int
	SmallDur                                                            time.Duration
	Conns                                                               int
	Pulls, PullClients                                                  int
	TagTTL                                                              string
	Sizes                                                               map[string][]int64
}

type H struct {
	cfg        Config
	deadline   time.Time
	stepEnd    time.Time
	started    time.Time
	upstream   *Server
	counter    *Proc
	counterURL string
	imgs       map[string]*Image
	order      []string
	certFile   string
	keyFile    string

	dp, fs, ngx, ngxpc, dist *Server
	dpErr                    string // why docker_proxy could not be measured
	staticSrc                string // what the static servers serve

	tables    []*Table
	targets   []Target
	raw       map[string]any
	versions  [][2]string
	notes     []string
	loadStart string
}

type Table struct {
	ID, Title, Note string
	Head            []string
	Rows            [][]string
}

type Target struct {
	M, What, Measured, Goal, Result string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "counter" {
		counterMain(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "run" {
		os.Args = append(os.Args[:1], os.Args[2:]...)
	}
	log.SetFlags(log.Ltime)
	var c Config
	flag.StringVar(&c.Work, "work", "", "work directory (temporary, removed by bench/run)")
	flag.StringVar(&c.PIDFile, "pidfile", "", "file to append child PIDs to")
	flag.StringVar(&c.Caddy, "caddy", "", "Caddy binary with docker_proxy")
	flag.StringVar(&c.Nginx, "nginx", "", "nginx binary (empty: no nginx rows)")
	flag.StringVar(&c.Registry, "registry", "", "distribution registry binary")
	flag.StringVar(&c.Wrk, "wrk", "", "wrk binary (empty: Go load generator)")
	flag.StringVar(&c.Out, "out", "", "directory for raw results and profiles")
	flag.StringVar(&c.Doc, "doc", "", "Markdown report to write (empty: none)")
	flag.StringVar(&c.Cmdline, "cmdline", "bench/run", "the command that reproduces this run, for the report")
	flag.StringVar(&c.Root, "root", "", "the plugin's module root (for its commit)")
	flag.Parse()
	if c.Work == "" || c.Caddy == "" || c.Registry == "" || c.Out == "" {
		log.Fatal("need -work, -caddy, -registry and -out")
	}
	c.Quick = os.Getenv("QUICK") == "1"
	c.Profile = os.Getenv("PROFILE") == "1"
	c.Only = map[string]bool{}
	for _, m := range strings.FieldsFunc(os.Getenv("ONLY"), func(r rune) bool { return r == ',' || r == ' ' }) {
		c.Only[m] = true
	}
	c.Skip = map[string]bool{}
	for _, k := range strings.FieldsFunc(os.Getenv("SKIP"), func(r rune) bool { return r == ',' || r == ' ' }) {
		c.Skip[k] = true
	}
	c.TagTTL = "5m"
	c.Conns = 64
	if c.Quick {
		c.Reps, c.Budget, c.Fanout = 2, 4*time.Minute, []int{1, 5}
		c.SmallDur, c.Pulls, c.PullClients = 2*time.Second, 200, 20
		c.Sizes = map[string][]int64{"small": {1 << 20, 1 << 20, 1 << 20}, "medium": {8 << 20, 8 << 20, 8 << 20, 8 << 20}, "large": {128 << 20}}
	} else {
		c.Reps, c.Budget, c.Fanout = 3, 14*time.Minute, []int{1, 10, 50}
		c.SmallDur, c.Pulls, c.PullClients = 3*time.Second, 1000, 20
		c.Sizes = map[string][]int64{"small": {1 << 20, 1 << 20, 1 << 20}, "medium": {100 << 20, 100 << 20, 100 << 20, 100 << 20}, "large": {1 << 30}}
	}
	c.ProfileSecs = envInt("PROFILE_SECONDS", 10)
	c.Reps = envInt("REPS", c.Reps)
	if v := os.Getenv("BUDGET"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			c.Budget = d
		} else if n, err := strconv.Atoi(v); err == nil {
			c.Budget = time.Duration(n) * time.Second
		}
	}
	if v := os.Getenv("FANOUT"); v != "" {
		c.Fanout = nil
		for _, f := range strings.Split(v, ",") {
			if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
				c.Fanout = append(c.Fanout, n)
			}
		}
	}
	c.UpstreamMBps, _ = strconv.ParseFloat(os.Getenv("UPSTREAM_MBPS"), 64)
	c.CaddyWriteChunk = os.Getenv("CADDY_WRITE_MAX_CHUNK")
	c.ColdWANMBps = 100
	if v := os.Getenv("COLD_WAN_MBPS"); v != "" {
		c.ColdWANMBps, _ = strconv.ParseFloat(v, 64)
	}
	pidFile = c.PIDFile
	os.MkdirAll(c.Out, 0o755)

	h := &H{cfg: c, started: time.Now(), raw: map[string]any{}, imgs: map[string]*Image{}}
	h.deadline = h.started.Add(c.Budget)
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer cancel()
	go func() {
		<-ctx.Done()
		// A signal: stop every child now; main returns on its own.
		stopAll()
	}()
	err := h.run(ctx)
	stopAll()
	if err != nil {
		log.Printf("FAILED: %v", err)
		os.Exit(1)
	}
}

func envInt(k string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(k)); err == nil && n > 0 {
		return n
	}
	return def
}

func (h *H) want(m string) bool { return len(h.cfg.Only) == 0 || h.cfg.Only[m] }

// timeLeft reports whether the run is inside its time budget and the
// current measurement inside its share of it.
func (h *H) timeLeft() bool { return time.Now().Before(h.deadline) && time.Now().Before(h.stepEnd) }

func (h *H) run(ctx context.Context) error {
	if err := h.setup(ctx); err != nil {
		return err
	}
	// Each measurement gets a share of the budget: past it, no new rounds
	// start (every measurement does at least one).
	steps := []struct {
		name  string
		f     func(context.Context) error
		share float64
	}{
		{"warm", h.mWarm, 0.12},
		{"small", h.mSmall, 0.12},
		{"economy", h.mEconomy, 0.08},
		{"cold", h.mCold, 0.20},
		{"fanout", h.mFanout, 1},
	}
	for _, s := range steps {
		if ctx.Err() != nil {
			h.notes = append(h.notes, "The run was interrupted; measurements from then on are missing.")
			break
		}
		if !h.want(s.name) {
			continue
		}
		if time.Now().After(h.deadline) {
			h.notes = append(h.notes, fmt.Sprintf("Measurement %q skipped: the time budget (%v) ran out.", s.name, h.cfg.Budget))
			continue
		}
		log.Printf("== %s", s.name)
		t0 := time.Now()
		h.stepEnd = t0.Add(time.Duration(s.share * float64(h.cfg.Budget)))
		if len(h.cfg.Only) > 0 {
			h.stepEnd = h.deadline
		}
		if err := s.f(ctx); err != nil {
			log.Printf("%s: %v", s.name, err)
			h.notes = append(h.notes, fmt.Sprintf("Measurement %q stopped: %v", s.name, oneLine(err.Error())))
		}
		log.Printf("== %s took %v", s.name, time.Since(t0).Round(time.Second))
	}
	return h.report()
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	return s
}

func (h *H) setup(ctx context.Context) error {
	var err error
	h.certFile, h.keyFile, err = writeCert(h.cfg.Work)
	if err != nil {
		return err
	}
	h.collectVersions()
	h.loadStart = loadAvg()

	// The upstream registry, then the counter in front of it.
	h.upstream = h.registryServer("upstream", "upstream registry", "")
	if err := h.upstream.Start(true); err != nil {
		return fmt.Errorf("upstream registry: %w", err)
	}
	cport := freePort()
	args := []string{os.Args[0], "counter", "-listen", fmt.Sprintf("127.0.0.1:%d", cport), "-target", h.upstream.HTTP}
	h.counter, err = startProc("counter", nil, filepath.Join(h.cfg.Work, "counter.log"), args...)
	if err != nil {
		return err
	}
	h.counterURL = fmt.Sprintf("http://127.0.0.1:%d", cport)
	if err := waitHTTP(h.counter, h.counterURL+"/__bench/counts", 10*time.Second); err != nil {
		return err
	}

	// Images.
	seed := uint64(time.Now().UnixNano())
	for _, name := range []string{"small", "medium", "large"} {
		t0 := time.Now()
		im, err := pushImage(h.upstream.HTTP, name, "bench/"+name, "v1", h.cfg.Sizes[name], seed)
		if err != nil {
			return fmt.Errorf("push %s: %w", name, err)
		}
		h.imgs[name] = im
		h.order = append(h.order, name)
		log.Printf("pushed %s: %d layers, %s in %v", im.Repo, len(im.Layers), mib(im.Size()), time.Since(t0).Round(time.Millisecond))
	}
	h.raw["images"] = h.imgs

	// The systems.
	h.dp = h.caddyServer("dp", "docker_proxy", "")
	h.dist = h.registryServer("dist", "distribution proxy", h.counterURL)
	if h.cfg.Nginx != "" {
		h.ngxpc = h.nginxProxyCache()
	}
	h.probeDP(ctx)

	// The static servers serve the blob docker_proxy serves, from the same
	// file when docker_proxy cached it, else the upstream's own copy.
	static := filepath.Join(h.cfg.Work, "static")
	os.MkdirAll(static, 0o755)
	large := h.imgs["large"].Layers[0]
	src := ""
	if h.dpErr == "" {
		src = findBlob(h.dp.Cache, large)
		if src == "" {
			h.dpErr = "docker_proxy served the large blob but no file of its size named by its digest is in the cache directory"
			log.Print(h.dpErr)
		}
	}
	if src == "" {
		src = findBlob(h.upstream.Cache, large)
		h.staticSrc = "the upstream registry's copy of the blob (docker_proxy's cache had none)"
	} else {
		h.staticSrc = "the very file docker_proxy's cache holds (hard link)"
	}
	if src == "" {
		return fmt.Errorf("large blob not found on disk")
	}
	if err := os.Link(src, filepath.Join(static, "large.blob")); err != nil {
		if err := os.Symlink(src, filepath.Join(static, "large.blob")); err != nil {
			return err
		}
		h.staticSrc += ", symlinked"
	}
	if err := os.WriteFile(filepath.Join(static, "manifest.json"), h.imgs["small"].Manifest, 0o644); err != nil {
		return err
	}
	log.Printf("static servers serve %s: %s", src, h.staticSrc)
	h.fs = h.caddyServer("fs", "Caddy file_server", "root * "+static+"\n\tfile_server")
	if h.cfg.Nginx != "" {
		h.ngx = h.nginxStatic(static)
	}
	return nil
}

// probeDP starts docker_proxy and pulls the small image and the large blob
// through it, so that its cache holds them.
func (h *H) probeDP(ctx context.Context) {
	fail := func(format string, a ...any) {
		h.dpErr = fmt.Sprintf(format, a...)
		log.Printf("docker_proxy not measurable: %s", h.dpErr)
		h.dp.Stop()
	}
	if err := h.dp.Start(true); err != nil {
		fail("start: %s", oneLine(err.Error()))
		return
	}
	hc := newClient("h1", 4)
	defer closeClient(hc)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if _, _, err := pull(pctx, hc, h.dp.HTTP, h.imgs["small"]); err != nil {
		fail("pull through docker_proxy: %s", oneLine(err.Error()))
		return
	}
	large := h.imgs["large"].Layers[0]
	r := fetch(pctx, hc, http.MethodGet, h.dp.HTTP+"/v2/bench/large/blobs/"+large.Digest, large.Digest, false)
	if r.Err != nil {
		fail("large blob through docker_proxy: %s", oneLine(r.Err.Error()))
		return
	}
	r = fetch(pctx, hc, http.MethodGet, h.dp.HTTP+"/v2/bench/large/blobs/"+large.Digest, "", false)
	log.Printf("docker_proxy works; second large GET: Cache-Status %q, %.2f GB/s", r.CacheStatus, gbps(r.Bytes, r.Dur))
	if !strings.Contains(r.CacheStatus, "hit") {
		h.notes = append(h.notes, fmt.Sprintf("docker_proxy's second GET of the large blob said Cache-Status %q, not a hit.", r.CacheStatus))
	}
}

// findBlob finds the file under dir that holds d: named by its hex digest
// (or in a directory so named), of its size.
func findBlob(dir string, d Desc) string {
	hexd := digestHex(d.Digest)
	found := ""
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() || found != "" {
			return nil
		}
		if !strings.Contains(p, hexd) {
			return nil
		}
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() && fi.Size() == d.Size {
			found = p
		}
		return nil
	})
	return found
}

func (h *H) counts(reset bool) (Counts, error) {
	u := h.counterURL + "/__bench/counts"
	if reset {
		u += "?reset=1"
	}
	resp, err := http.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	c := Counts{}
	return c, json.NewDecoder(resp.Body).Decode(&c)
}

func cmdOut(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unknown"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

func (h *H) collectVersions() {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(string(b))
		if len(f) > 1 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			mem = fmt.Sprintf(", %.0f GiB memory", float64(kb)/(1<<20))
		}
	}
	h.versions = append(h.versions,
		[2]string{"CPUs", fmt.Sprintf("%d (%s)%s", runtime.NumCPU(), model, mem)},
		[2]string{"kernel", cmdOut("uname", "-sr")},
		[2]string{"Go", cmdOut("go", "version")},
		[2]string{"Caddy", cmdOut(h.cfg.Caddy, "version")},
		[2]string{"upstream and proxy-mode registry", strings.TrimPrefix(cmdOut(h.cfg.Registry, "--version"), h.cfg.Registry+" ")},
	)
	if h.cfg.Nginx != "" {
		h.versions = append(h.versions, [2]string{"nginx", strings.TrimPrefix(cmdOut(h.cfg.Nginx, "-v"), "nginx version: ")})
	}
	if h.cfg.Wrk != "" {
		h.versions = append(h.versions, [2]string{"wrk", cmdOut(h.cfg.Wrk, "-v")})
	}
	if h.cfg.Root != "" {
		rev := cmdOut("git", "-C", h.cfg.Root, "rev-parse", "--short", "HEAD")
		if st := cmdOut("git", "-C", h.cfg.Root, "status", "--porcelain", "--untracked-files=no"); st != "" && st != "unknown" {
			rev += " (with uncommitted changes)"
		}
		h.versions = append(h.versions, [2]string{"docker_proxy", rev})
	}
}

// profiled runs f; with PROFILE=1 and a Caddy server it also records a CPU
// profile and the allocations of the server meanwhile, and saves
// `go tool pprof -top` of both to the out directory.
func (h *H) profiled(s *Server, tag string, f func()) {
	if !h.cfg.Profile || s == nil || s.Admin == "" {
		f()
		return
	}
	base := filepath.Join(h.cfg.Out, "pprof-"+tag+"-"+s.Key)
	done := make(chan struct{})
	go func() {
		defer close(done)
		save(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", s.Admin, h.cfg.ProfileSecs), base+".cpu.pb.gz")
	}()
	f()
	<-done
	save(s.Admin+"/debug/pprof/allocs", base+".allocs.pb.gz")
	for _, p := range [][2]string{{".cpu", ""}, {".allocs", "-sample_index=alloc_space"}} {
		args := []string{"tool", "pprof", "-top", "-nodecount=40"}
		if p[1] != "" {
			args = append(args, p[1])
		}
		args = append(args, s.Bin, base+p[0]+".pb.gz")
		out, _ := exec.Command("go", args...).CombinedOutput()
		os.WriteFile(base+p[0]+".txt", out, 0o644)
	}
	log.Printf("profile: %s.{cpu,allocs}.txt", base)
}

func save(url, file string) {
	resp, err := http.Get(url)
	if err != nil {
		log.Printf("pprof %s: %v", url, err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		return
	}
	defer f.Close()
	io.Copy(f, resp.Body)
}
