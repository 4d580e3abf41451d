package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"
)

// samples collects the repeated values of one cell.
type samples map[string][]float64

func (s samples) add(k string, v float64) { s[k] = append(s[k], v) }

func (s samples) med(k string) (float64, bool) {
	v := s[k]
	if len(v) == 0 {
		return 0, false
	}
	c := slices.Clone(v)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2], true
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2, true
}

func (s samples) max(k string) (float64, bool) {
	if len(s[k]) == 0 {
		return 0, false
	}
	return slices.Max(s[k]), true
}

// cell formats the median of k with its range.
func (s samples) cell(k string, f func(float64) string) string {
	m, ok := s.med(k)
	if !ok {
		return "n/a"
	}
	v := s[k]
	if len(v) == 1 {
		return f(m)
	}
	return fmt.Sprintf("%s (%s–%s)", f(m), f(slices.Min(v)), f(slices.Max(v)))
}

func (s samples) ratio(a, b string) (float64, bool) {
	x, ok1 := s.med(a)
	y, ok2 := s.med(b)
	if !ok1 || !ok2 || y == 0 {
		return 0, false
	}
	return x / y, true
}

func gbps(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e9 }
func mib(n int64) string                    { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }
func fGB(v float64) string                  { return fmt.Sprintf("%.2f", v) }
func fSec(v float64) string                 { return fmt.Sprintf("%.2f s", v) }
func fMiB(v float64) string                 { return fmt.Sprintf("%.0f MiB", v/(1<<20)) }
func fRPS(v float64) string                 { return fmt.Sprintf("%.0f", v) }
func fCPU(v float64) string                 { return fmt.Sprintf("%.2f", v) }
func fX(v float64) string                   { return fmt.Sprintf("%.2fx", v) }

func ratioCell(v float64, ok bool) string {
	if !ok {
		return "n/a"
	}
	return fX(v)
}

// target records a target row; cmp is ">=", "<=" or "==".
func (h *H) target(m, what string, v float64, ok bool, cmp string, goal float64, format func(float64) string) {
	t := Target{M: m, What: what, Goal: cmp + " " + format(goal)}
	if !ok {
		t.Measured, t.Result = "n/a", "n/a"
		if h.dpErr != "" {
			t.Result = "not measured"
		}
		h.targets = append(h.targets, t)
		return
	}
	t.Measured = format(v)
	pass := false
	switch cmp {
	case ">=":
		pass = v >= goal
	case "<=":
		pass = v <= goal
	case "==":
		pass = v == goal
	}
	t.Result = "**miss**"
	if pass {
		t.Result = "pass"
	}
	h.targets = append(h.targets, t)
}

// rotate returns the systems starting at rep, so that no system always
// runs first (or right after the same neighbour).
func rotate(ss []*Server, rep int) []*Server {
	if len(ss) == 0 {
		return ss
	}
	r := rep % len(ss)
	return append(slices.Clone(ss[r:]), ss[:r]...)
}

func present(ss ...*Server) []*Server {
	var out []*Server
	for _, s := range ss {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// live are the systems to measure: docker_proxy only if it works.
func (h *H) live(ss ...*Server) []*Server {
	var out []*Server
	for _, s := range present(ss...) {
		if s == h.dp && h.dpErr != "" {
			continue
		}
		if h.cfg.Skip[s.Key] {
			continue
		}
		out = append(out, s)
	}
	return out
}

func (h *H) blobURL(s *Server, proto string, im *Image, d Desc) string {
	if s == h.fs || s == h.ngx {
		return s.URL(proto) + "/large.blob"
	}
	return s.URL(proto) + "/v2/" + im.Repo + "/blobs/" + d.Digest
}

// 1. Warm blob throughput.
func (h *H) mWarm(ctx context.Context) error {
	im := h.imgs["large"]
	large := im.Layers[0]
	systems := h.live(h.dp, h.fs, h.ngx, h.ngxpc, h.dist)
	for _, s := range systems {
		if err := s.Start(false); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		// Warm-up: fills the proxies' caches and the page cache.
		hc := newClient("h1", 1)
		r := fetch(ctx, hc, http.MethodGet, h.blobURL(s, "h1", im, large), large.Digest, false)
		closeClient(hc)
		if r.Err != nil {
			return fmt.Errorf("%s warm-up: %w", s.Name, r.Err)
		}
	}
	S := samples{}
	protos := []string{"h1", "h2"}
	for rep := 0; rep < h.cfg.Reps && (rep == 0 || h.timeLeft()); rep++ {
		for _, proto := range protos {
			for _, s := range rotate(systems, rep) {
				if s.URL(proto) == "" {
					continue
				}
				hc := newClient(proto, 1)
				var r FetchResult
				c0 := groupCPU(s.PID())
				h.profiled(map[bool]*Server{true: s}[rep == 0 && (s == h.dp || s == h.fs)], "warm-"+proto, func() {
					r = fetch(ctx, hc, http.MethodGet, h.blobURL(s, proto, im, large), "", false)
				})
				closeClient(hc)
				if r.Err == nil && r.Bytes != large.Size {
					r.Err = fmt.Errorf("%d bytes, want %d", r.Bytes, large.Size)
				}
				if r.Err != nil {
					return fmt.Errorf("%s %s: %w", s.Name, proto, r.Err)
				}
				if (proto == "h2") != (r.Proto == "HTTP/2.0") {
					return fmt.Errorf("%s %s: got %s", s.Name, proto, r.Proto)
				}
				if s == h.dp && !strings.Contains(r.CacheStatus, "hit") {
					h.notes = append(h.notes, fmt.Sprintf("warm: docker_proxy answered Cache-Status %q", r.CacheStatus))
				}
				S.add(proto+"/"+s.Key, gbps(r.Bytes, r.Dur))
				S.add("cpu/"+proto+"/"+s.Key, (groupCPU(s.PID())-c0)/(float64(r.Bytes)/1e9))
				log.Printf("warm %s %-20s %.2f GB/s", proto, s.Name, gbps(r.Bytes, r.Dur))
			}
		}
	}
	h.raw["warm"] = S
	t := &Table{ID: "warm", Title: "1. Warm blob throughput",
		Note: fmt.Sprintf("One client GETs the %s blob, cached, over a new connection; GB/s = 10^9 bytes/s, median (min–max) of %d runs per cell, systems interleaved. "+
			"Caddy file_server and nginx static serve %s. nginx static uses sendfile on plain HTTP. distribution serves one address, plain HTTP only.",
			mib(large.Size), h.cfg.Reps, h.staticSrc),
		Head: []string{"protocol", "system", "GB/s", "docker_proxy / system", "server CPU s/GB", "docker_proxy / system"}}
	for _, proto := range protos {
		for _, s := range present(h.dp, h.fs, h.ngx, h.ngxpc, h.dist) {
			k := proto + "/" + s.Key
			ratio, cratio := "—", "—"
			if s != h.dp {
				ratio = ratioCell(S.ratio(proto+"/dp", k))
				cratio = ratioCell(S.ratio("cpu/"+proto+"/dp", "cpu/"+k))
			}
			t.Rows = append(t.Rows, []string{map[string]string{"h1": "HTTP/1.1", "h2": "HTTPS h2"}[proto], s.Name, S.cell(k, fGB), ratio, S.cell("cpu/"+k, fCPU), cratio})
		}
	}
	h.tables = append(h.tables, t)
	for _, proto := range protos {
		p := map[string]string{"h1": "HTTP/1.1", "h2": "h2"}[proto]
		v, ok := S.ratio(proto+"/dp", proto+"/fs")
		h.target("1", "warm blob GB/s vs Caddy file_server, "+p, v, ok, ">=", 0.95, fX)
		v, ok = S.ratio(proto+"/dp", proto+"/ngx")
		h.target("1", "warm blob GB/s vs nginx static, "+p, v, ok, ">=", 0.9, fX)
	}
	return nil
}

// 5. Small requests: manifest hits per second.
func (h *H) mSmall(ctx context.Context) error {
	im := h.imgs["small"]
	systems := h.live(h.dp, h.fs, h.ngx, h.ngxpc, h.dist)
	url := func(s *Server) string {
		if s == h.fs || s == h.ngx {
			return s.HTTP + "/manifest.json"
		}
		return s.HTTP + "/v2/" + im.Repo + "/manifests/" + im.Tag
	}
	for _, s := range systems {
		if s.Proc == nil || s.Proc.Exited() {
			if err := s.Start(false); err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
		}
		hc := newClient("h1", 1)
		r := fetch(ctx, hc, http.MethodGet, url(s), im.ManifestDigest, false, "Accept", acceptAll)
		closeClient(hc)
		if r.Err != nil {
			return fmt.Errorf("%s warm-up: %w", s.Name, r.Err)
		}
	}
	if _, err := h.counts(true); err != nil {
		return err
	}
	S := samples{}
	methods := []string{http.MethodGet, http.MethodHead}
	for rep := 0; rep < h.cfg.Reps && (rep == 0 || h.timeLeft()); rep++ {
		for _, m := range methods {
			for _, s := range rotate(systems, rep) {
				var v float64
				var err error
				if _, err := h.counts(true); err != nil {
					return err
				}
				c0 := groupCPU(s.PID())
				h.profiled(map[bool]*Server{true: s}[rep == 0 && (s == h.dp || s == h.fs)], "small-"+m, func() {
					v, err = rps(ctx, h.cfg.Wrk, h.cfg.Work, m, url(s), h.cfg.Conns, h.cfg.SmallDur)
				})
				if err != nil {
					return fmt.Errorf("%s %s: %w", s.Name, m, err)
				}
				S.add(m+"/"+s.Key, v)
				S.add("cpu/"+m+"/"+s.Key, (groupCPU(s.PID())-c0)/(v*h.cfg.SmallDur.Seconds())*1e6)
				if c, err := h.counts(true); err == nil {
					S.add("up/"+m+"/"+s.Key, float64(c.total())/(v*h.cfg.SmallDur.Seconds()))
				}
				log.Printf("small %-4s %-20s %.0f req/s", m, s.Name, v)
			}
		}
	}
	h.raw["small"] = S
	tool := "A lean Go HTTP/1.1 load generator (bench/cmd/benchctl: keep-alive, no pipelining; wrk cannot do HEAD)"
	if h.cfg.Wrk != "" && os.Getenv("SMALL_TOOL") == "wrk" {
		tool = "GET: wrk -t2; HEAD: the Go load generator (wrk cannot do HEAD)"
	}
	t := &Table{ID: "small", Title: "5. Small requests: manifest hits per second",
		Note: fmt.Sprintf("%s, %d keep-alive connections, %v per run, HTTP/1.1; the %d-byte manifest by tag (docker_proxy and the proxies, inside tag_ttl) or a file of the same bytes (file_server, nginx static); "+
			"median (min–max) of %d runs. \"upstream / request\": requests that reached the upstream per request served.",
			tool, h.cfg.Conns, h.cfg.SmallDur, len(im.Manifest), h.cfg.Reps),
		Head: []string{"method", "system", "requests/s", "docker_proxy / system", "server CPU µs/request", "upstream / request"}}
	for _, m := range methods {
		for _, s := range present(h.dp, h.fs, h.ngx, h.ngxpc, h.dist) {
			ratio := "—"
			if s != h.dp {
				ratio = ratioCell(S.ratio(m+"/dp", m+"/"+s.Key))
			}
			up := "—"
			if s != h.fs && s != h.ngx {
				up = S.cell("up/"+m+"/"+s.Key, fFrac)
			}
			t.Rows = append(t.Rows, []string{m, s.Name, S.cell(m+"/"+s.Key, fRPS), ratio, S.cell("cpu/"+m+"/"+s.Key, fInt), up})
		}
	}
	h.tables = append(h.tables, t)
	for _, m := range methods {
		v, ok := S.ratio(m+"/dp", m+"/fs")
		h.target("5", "manifest "+m+" hits/s vs Caddy file_server", v, ok, ">=", 2, fX)
	}
	return nil
}

// 6. Upstream economy.
func (h *H) mEconomy(ctx context.Context) error {
	im := h.imgs["small"]
	systems := h.live(h.dp, h.ngxpc, h.dist)
	t := &Table{ID: "economy", Title: "6. Upstream economy",
		Note: fmt.Sprintf("%d pulls of %s:%s (%s) by %d concurrent clients, from an empty cache, then %d more inside tag_ttl (%s). "+
			"A pull is what docker pull sends: HEAD the tag, GET the manifest by digest, GET config and layers (every body checked against its digest). "+
			"Requests that reached the upstream, counted by a proxy in front of it. Without a cache, each phase would send the upstream %d manifest HEADs, %d manifest GETs and %d blob GETs.",
			h.cfg.Pulls, im.Repo, im.Tag, mib(im.Size()), h.cfg.PullClients, h.cfg.Pulls, h.cfg.TagTTL,
			h.cfg.Pulls, h.cfg.Pulls, h.cfg.Pulls*(1+len(im.Layers))),
		Head: []string{"system", "phase", "manifest GET", "manifest HEAD", "blob GET", "blob HEAD", "other", "all", "upstream bytes", "wall time"}}
	type res struct{ get, total int64 }
	results := map[string][2]res{}
	for _, s := range systems {
		if err := s.Start(true); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		var rr [2]res
		for phase := 0; phase < 2; phase++ {
			if _, err := h.counts(true); err != nil {
				return err
			}
			d, err := manyPulls(ctx, s.HTTP, im, h.cfg.Pulls, h.cfg.PullClients)
			if err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
			c, err := h.counts(true)
			if err != nil {
				return err
			}
			mget := c.get("GET manifest-tag").N + c.get("GET manifest-digest").N
			mhead := c.get("HEAD manifest-tag").N + c.get("HEAD manifest-digest").N
			bget, bhead := c.get("GET blob").N, c.get("HEAD blob").N
			other := c.total() - mget - mhead - bget - bhead
			var bytes int64
			for _, v := range c {
				bytes += v.Bytes
			}
			rr[phase] = res{mget, c.total()}
			t.Rows = append(t.Rows, []string{s.Name, []string{"cold", "warm"}[phase],
				fmt.Sprint(mget), fmt.Sprint(mhead), fmt.Sprint(bget), fmt.Sprint(bhead), fmt.Sprint(other), fmt.Sprint(c.total()),
				fmt.Sprintf("%.1f MiB", float64(bytes)/(1<<20)), fSec(d.Seconds())})
			h.raw[fmt.Sprintf("economy/%s/%d", s.Key, phase)] = c
			log.Printf("economy %-20s phase %d: %d manifest GETs, %d total upstream requests, %v", s.Name, phase, mget, c.total(), d.Round(time.Millisecond))
		}
		results[s.Key] = rr
	}
	h.tables = append(h.tables, t)
	r, ok := results["dp"]
	h.target("6", fmt.Sprintf("upstream manifest GETs for %d cold pulls", h.cfg.Pulls), float64(r[0].get), ok, "==", 1, fInt)
	h.target("6", fmt.Sprintf("upstream requests for %d pulls inside tag_ttl", h.cfg.Pulls), float64(r[1].total), ok, "==", 0, fInt)
	return nil
}

func fInt(v float64) string  { return fmt.Sprintf("%.0f", v) }
func fFrac(v float64) string { return fmt.Sprintf("%.3g", v) }

// direct is a pseudo-system: pulls straight from the upstream.
func (h *H) directServer() *Server {
	return &Server{Key: "direct", Name: "direct from upstream", HTTP: h.counterURL}
}

// 2. Cold pull wall time.
func (h *H) mCold(ctx context.Context) error {
	direct := h.directServer()
	systems := append([]*Server{direct}, h.live(h.dp, h.ngxpc, h.dist)...)
	hc := newClient("h1", 4)
	for _, name := range h.order {
		// Puts the upstream's files in the page cache.
		if _, _, err := pull(ctx, hc, direct.HTTP, h.imgs[name]); err != nil {
			return fmt.Errorf("direct warm-up: %w", err)
		}
	}
	closeClient(hc)
	S := samples{}
	// The loopback rounds (the upstream as fast as the machine: CPU-bound),
	// then the medium image again with the upstream at a WAN's bandwidth,
	// as a mirror in front of Docker Hub sees it.
	type round struct {
		name, key string // image name; sample key prefix
		rate      float64
	}
	var rounds []round
	for _, name := range h.order {
		rounds = append(rounds, round{name, name, 0})
	}
	wan := ""
	if h.cfg.ColdWANMBps > 0 && h.imgs["medium"] != nil {
		wan = fmt.Sprintf("medium@%.0fMBps", h.cfg.ColdWANMBps)
		rounds = append(rounds, round{"medium", wan, h.cfg.ColdWANMBps * 1e6})
	}
	for _, rd := range rounds {
		name := rd.key
		im := h.imgs[rd.name]
		if err := h.setUpstreamRate(rd.rate); err != nil {
			return fmt.Errorf("upstream rate: %w", err)
		}
		for rep := 0; rep < h.cfg.Reps && (rep == 0 || h.timeLeft()); rep++ {
			for _, s := range rotate(systems, rep) {
				if s != direct {
					if err := s.Start(true); err != nil {
						return fmt.Errorf("%s: %w", s.Name, err)
					}
				}
				var smp *rssSampler
				if s.Proc != nil {
					smp = sampleRSS(ctx, s.PID())
				}
				hc := newClient("h1", 4)
				var (
					n   int64
					d   time.Duration
					err error
				)
				c0 := groupCPU(s.PID())
				h.profiled(map[bool]*Server{true: s}[rep == 0 && s == h.dp && name == "large"], "cold-"+name, func() {
					n, d, err = pull(ctx, hc, s.HTTP, im)
				})
				closeClient(hc)
				if smp != nil {
					S.add("rss/"+name+"/"+s.Key, float64(smp.Peak(s.PID())))
				}
				if err != nil {
					return fmt.Errorf("%s %s: %w", s.Name, name, err)
				}
				S.add(name+"/"+s.Key, d.Seconds())
				if s.Proc != nil {
					S.add("cpu/"+name+"/"+s.Key, groupCPU(s.PID())-c0)
				}
				log.Printf("cold %-6s %-20s %v (%.2f GB/s)", name, s.Name, d.Round(time.Millisecond), gbps(n, d))
			}
		}
	}
	if err := h.setUpstreamRate(0); err != nil {
		return fmt.Errorf("upstream rate: %w", err)
	}
	h.raw["cold"] = S
	t := &Table{ID: "cold", Title: "2. Cold pull wall time",
		Note: fmt.Sprintf("One docker-pull-like client (HEAD tag, GET manifest, blobs 3 at a time, every body checked against its digest), HTTP/1.1, "+
			"each proxy restarted with an empty cache before each pull; median (min–max) of %d runs, systems interleaved. "+
			"Direct pulls go to the upstream through the same counting proxy the caches use. Peak RSS is the proxy process's VmHWM (nginx: all its processes, sampled).", h.cfg.Reps),
		Head: []string{"image", "system", "wall time", "/ direct", "proxy CPU", "peak RSS"}}
	if wan != "" {
		t.Note += fmt.Sprintf(" The last rows pull the medium image with the upstream limited to %.0f MB/s (all connections together), "+
			"as a mirror in front of a remote registry sees it; `COLD_WAN_MBPS` sets it.", h.cfg.ColdWANMBps)
	}
	for _, rd := range rounds {
		name := rd.key
		im := h.imgs[rd.name]
		label := fmt.Sprintf("%s (%d x %s)", rd.name, len(im.Layers), mib(im.Layers[0].Size))
		if rd.rate > 0 {
			label += fmt.Sprintf(", upstream at %.0f MB/s", rd.rate/1e6)
		}
		for _, s := range append([]*Server{direct}, present(h.dp, h.ngxpc, h.dist)...) {
			ratio, rss, cpu := "—", "—", "—"
			if s != direct {
				ratio = ratioCell(S.ratio(name+"/"+s.Key, name+"/direct"))
				rss = S.cell("rss/"+name+"/"+s.Key, fMiB)
				cpu = S.cell("cpu/"+name+"/"+s.Key, fSec)
			}
			t.Rows = append(t.Rows, []string{label, s.Name, S.cell(name+"/"+s.Key, fSec), ratio, cpu, rss})
		}
	}
	h.tables = append(h.tables, t)
	for _, rd := range rounds {
		v, ok := S.ratio(rd.key+"/dp", rd.key+"/direct")
		what := "cold pull time vs direct, " + rd.name
		if rd.rate > 0 {
			what += fmt.Sprintf(", upstream at %.0f MB/s", rd.rate/1e6)
		}
		h.target("2", what, v, ok, "<=", 1.10, fX)
	}
	v, ok := S.ratio("rss/large/dp", "rss/medium/dp")
	h.target("4", "peak RSS during a cold pull, large / medium image (flat in blob size)", v, ok, "<=", 1.3, fX)
	return nil
}

// 3 and 4. Fan-out of cold pulls of the large blob, and peak RSS.
func (h *H) mFanout(ctx context.Context) error {
	im := h.imgs["large"]
	large := im.Layers[0]
	// file_server first: when the budget cuts a round short, the baseline
	// and docker_proxy are the runs that happened.
	systems := h.live(h.fs, h.dp, h.ngxpc, h.dist)
	if h.cfg.UpstreamMBps > 0 {
		if err := h.setUpstreamRate(h.cfg.UpstreamMBps * 1e6); err != nil {
			return err
		}
		defer h.setUpstreamRate(0)
	}
	S := samples{}
	done := map[int]bool{}
	for _, c := range h.cfg.Fanout {
		if len(done) > 0 && !h.timeLeft() {
			h.notes = append(h.notes, fmt.Sprintf("fan-out: %d clients skipped, the time budget ran out", c))
			continue
		}
		// Fewer runs at high concurrency: each moves c times the blob.
		reps := h.cfg.Reps
		if c >= 50 {
			reps = max(1, reps-2)
		} else if c >= 10 {
			reps = max(1, reps-1)
		}
		for rep := 0; rep < reps && (rep == 0 || h.timeLeft()); rep++ {
			for _, s := range rotate(systems, rep) {
				if time.Now().After(h.deadline) {
					h.notes = append(h.notes, fmt.Sprintf("fan-out: runs at %d clients from %s on skipped, the time budget ran out", c, s.Name))
					break
				}
				// A fresh process for each run, so that VmHWM is this run's;
				// an empty cache for the proxies (file_server serves the warm file).
				if err := s.Start(s != h.fs); err != nil {
					return fmt.Errorf("%s: %w", s.Name, err)
				}
				if _, err := h.counts(true); err != nil {
					return err
				}
				smp := sampleRSS(ctx, s.PID())
				c0 := groupCPU(s.PID())
				var (
					durs  []time.Duration
					n     int64
					stats []string
					err   error
				)
				tctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
				h.profiled(map[bool]*Server{true: s}[rep == 0 && c == h.cfg.Fanout[len(h.cfg.Fanout)-1] && (s == h.dp || s == h.fs)], fmt.Sprintf("fanout%d", c), func() {
					durs, n, stats, err = fanOut(tctx, "h1", c, h.blobURL(s, "h1", im, large), large.Digest)
				})
				cancel()
				peak := smp.Peak(s.PID())
				cpu := groupCPU(s.PID()) - c0
				cnt, cerr := h.counts(true)
				if err != nil {
					return fmt.Errorf("%s, %d clients: %w", s.Name, c, err)
				}
				if cerr != nil {
					return cerr
				}
				k := fmt.Sprintf("%d/%s", c, s.Key)
				slowest := slices.Max(durs)
				S.add("slow/"+k, slowest.Seconds())
				S.add("up/"+k, float64(cnt.get("GET blob").Bytes)/float64(large.Size))
				S.add("rss/"+k, float64(peak))
				S.add("agg/"+k, gbps(n, slowest))
				S.add("cpu/"+k, cpu)
				log.Printf("fanout %2d %-20s slowest %v, upstream %.2fx, peak RSS %s, statuses %s",
					c, s.Name, slowest.Round(time.Millisecond), float64(cnt.get("GET blob").Bytes)/float64(large.Size), fMiB(float64(peak)), summarize(stats))
			}
		}
		done[c] = true
	}
	h.raw["fanout"] = S
	one := h.cfg.Fanout[0]
	t := &Table{ID: "fanout", Title: "3. Fan-out: concurrent cold pulls of the large blob, and 4. peak RSS",
		Note: fmt.Sprintf("N clients start together, each GETs the %s blob over its own HTTP/1.1 connection and checks its sha256. The proxies start empty (a cold fill shared by all N); "+
			"Caddy file_server serves the same blob warm from disk, the physical limit for N clients here. Median (min–max) over up to %d runs (one fewer from 10 clients, two fewer from 50). "+
			"\"upstream\" = blob bytes that reached the upstream / blob size. \"/ 1 client\" = slowest client / the same system's slowest at %d client(s). "+
			"Peak RSS: VmHWM of a freshly started process (nginx: its processes' RSS summed, sampled every 50 ms).%s",
			mib(large.Size), h.cfg.Reps, one, map[bool]string{true: fmt.Sprintf(" Upstream bandwidth limited to %.0f MB/s.", h.cfg.UpstreamMBps), false: " Upstream bandwidth not limited (loopback)."}[h.cfg.UpstreamMBps > 0]),
		Head: []string{"clients", "system", "upstream", "slowest client", "/ 1 client", "/ file_server (warm)", "aggregate GB/s", "server CPU", "peak RSS", "RSS / file_server"}}
	for _, c := range h.cfg.Fanout {
		if !done[c] {
			continue
		}
		for _, s := range present(h.dp, h.ngxpc, h.dist, h.fs) {
			k := fmt.Sprintf("%d/%s", c, s.Key)
			up := S.cell("up/"+k, fX)
			if s == h.fs {
				up = "— (warm)"
			}
			t.Rows = append(t.Rows, []string{fmt.Sprint(c), s.Name, up, S.cell("slow/"+k, fSec),
				ratioCell(S.ratio("slow/"+k, fmt.Sprintf("slow/%d/%s", one, s.Key))),
				ratioCell(S.ratio("slow/"+k, fmt.Sprintf("slow/%d/fs", c))),
				S.cell("agg/"+k, fGB), S.cell("cpu/"+k, fSec), S.cell("rss/"+k, fMiB),
				ratioCell(S.ratio("rss/"+k, fmt.Sprintf("rss/%d/fs", c)))})
		}
	}
	h.tables = append(h.tables, t)
	for _, c := range h.cfg.Fanout {
		if !done[c] {
			continue
		}
		k := fmt.Sprintf("%d/dp", c)
		v, ok := S.max("up/" + k)
		h.target("3", fmt.Sprintf("upstream bytes / blob size, %d clients (worst run)", c), v, ok, "==", 1, fX)
		if c != one {
			v, ok = S.ratio("slow/"+k, fmt.Sprintf("slow/%d/dp", one))
			h.target("3", fmt.Sprintf("slowest client / one client, %d clients", c), v, ok, "<=", 1.3, fX)
		}
		if h.ngxpc != nil {
			v, ok = S.ratio("slow/"+k, fmt.Sprintf("slow/%d/ngxpc", c))
			h.target("3", fmt.Sprintf("slowest client / nginx proxy_cache_lock's slowest, %d clients", c), v, ok, "<=", 1, fX)
		}
		v, ok = S.ratio("rss/"+k, fmt.Sprintf("rss/%d/fs", c))
		h.target("4", fmt.Sprintf("peak RSS / Caddy file_server's, %d clients", c), v, ok, "<=", 1.3, fX)
	}
	last := h.cfg.Fanout[len(h.cfg.Fanout)-1]
	if last != one && done[last] {
		v, ok := S.ratio(fmt.Sprintf("rss/%d/dp", last), fmt.Sprintf("rss/%d/dp", one))
		h.target("4", fmt.Sprintf("peak RSS growth from %d to %d clients (flat)", one, last), v, ok, "<=", 1.3, fX)
	}
	return nil
}

func summarize(stats []string) string {
	m := map[string]int{}
	for _, s := range stats {
		if s == "" {
			s = "-"
		}
		m[s]++
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%q x%d", k, v))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// setUpstreamRate limits the upstream's bandwidth (bytes/s, 0: none).
func (h *H) setUpstreamRate(rate float64) error {
	resp, err := http.Get(fmt.Sprintf("%s/__bench/rate?bps=%.0f", h.counterURL, rate))
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
