// Command scale measures what the blob cache's index costs as the cache
// grows: for synthetic caches of many entries, made in the store's on-disk
// format, the time from a process's start to its first hit served and to a
// complete index, the heap and RSS per entry, and eviction throughput,
// with the page cache dropped (cold) and warm. The same measurements run
// against two builds side by side, the store of this tree and a baseline
// (an older commit's, built with the tag baseline), and it writes a
// markdown table. See bench/README.md ("Scale").
//
//	scale run -sizes 10000,100000 -bin name=path,... -work DIR -md OUT
//	scale gen -dir DIR -n N           (used by run)
//	scale child -dir DIR -probe HEX   (used by run: one measured process)
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/opencontainers/go-digest"
)

// blobSize is the size of every synthetic entry: a small blob, and the
// same as a tag record counts (a file system block), so that eviction's
// count of removed items is the bytes it freed over blobSize.
const blobSize = 4096

func main() {
	log.SetFlags(0)
	log.SetPrefix("scale: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: scale run|gen|child [flags]")
	}
	switch os.Args[1] {
	case "gen":
		fs := flag.NewFlagSet("gen", flag.ExitOnError)
		dir := fs.String("dir", "", "cache directory to create")
		n := fs.Int("n", 10000, "entries")
		fs.Parse(os.Args[2:])
		if err := generate(*dir, *n); err != nil {
			log.Fatal(err)
		}
	case "child":
		fs := flag.NewFlagSet("child", flag.ExitOnError)
		dir := fs.String("dir", "", "cache directory")
		probe := fs.String("probe", "", "hex of the entry to get first")
		evict := fs.Int("evict", 0, "entries to evict once indexed (0: none)")
		fs.Parse(os.Args[2:])
		if err := child(*dir, *probe, *evict); err != nil {
			log.Fatal(err)
		}
	case "run":
		if err := run(os.Args[2:]); err != nil {
			log.Fatal(err)
		}
	default:
		log.Fatalf("unknown command %q", os.Args[1])
	}
}

// entryContent is the content of synthetic entry i: distinct for every i.
func entryContent(i int, buf []byte) {
	clear(buf)
	binary.LittleEndian.PutUint64(buf, uint64(i))
	copy(buf[8:], "docker_proxy scale benchmark entry")
}

// deadUpstream is the upstream of the Caddy under test: nothing listens
// there, so every answer it gives comes from its cache. Each entry's
// sidecar lets the anonymous identity of one of 300 repositories of it
// read the entry, as the proxy records it.
const deadUpstream = "http://127.0.0.1:9"

// generate writes n entries (data and sidecar, as a commit leaves them)
// and n/20 tag records into dir, with recorded uses spread over the last
// 30 days, and the list of entries (digest hex and repository number, one
// a line) into dir+".list".
func generate(dir string, n int) error {
	for _, d := range []string{filepath.Join(dir, "blobs", "sha256"), filepath.Join(dir, "tags"), filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	list, err := os.Create(dir + ".list")
	if err != nil {
		return err
	}
	defer list.Close()
	w := bufio.NewWriter(list)
	var mu sync.Mutex
	const workers = 2
	errs := make(chan error, workers)
	now := time.Now()
	for wk := range workers {
		go func() {
			buf := make([]byte, blobSize)
			rng := rand.New(rand.NewPCG(uint64(wk), 1))
			made := map[string]bool{}
			for i := wk; i < n; i += workers {
				entryContent(i, buf)
				sum := sha256.Sum256(buf)
				enc := hex.EncodeToString(sum[:])
				sub := filepath.Join(dir, "blobs", "sha256", enc[:2])
				if !made[enc[:2]] {
					os.MkdirAll(sub, 0o755)
					made[enc[:2]] = true
				}
				d := "sha256:" + enc
				meta, _ := json.Marshal(map[string]any{"digest": d, "size": blobSize,
					"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
					"scopes":    []string{fmt.Sprintf("anonymous|%s/library/app%d", deadUpstream, i%300)}})
				if err := os.WriteFile(filepath.Join(sub, enc+".json"), meta, 0o644); err != nil {
					errs <- err
					return
				}
				data := filepath.Join(sub, enc)
				if err := os.WriteFile(data, buf, 0o644); err != nil {
					errs <- err
					return
				}
				used := now.Add(-time.Duration(rng.Int64N(int64(30 * 24 * time.Hour))))
				os.Chtimes(data, used, used.Add(-time.Hour))
				if i%20 == 0 {
					key := fmt.Sprintf("docker.io/library/app%d:v%d", i%300, i)
					rec, _ := json.Marshal(map[string]any{"key": key, "digest": d, "mediaType": "application/vnd.oci.image.manifest.v1+json",
						"size": blobSize, "checked": used})
					ts := sha256.Sum256([]byte(key))
					th := hex.EncodeToString(ts[:])
					tdir := filepath.Join(dir, "tags", th[:2])
					os.MkdirAll(tdir, 0o755)
					if err := os.WriteFile(filepath.Join(tdir, th+".json"), rec, 0o644); err != nil {
						errs <- err
						return
					}
				}
				mu.Lock()
				fmt.Fprintf(w, "%s %d\n", enc, i%300)
				mu.Unlock()
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			return err
		}
	}
	return w.Flush()
}

// child is one measured process: it opens the cache, serves one hit
// (reads the probe entry's first byte), waits for the complete index, and
// reports memory and, if asked, eviction; each step as a line on stdout,
// which the parent timestamps as it arrives.
func child(dir, probe string, evict int) error {
	runtime.GC()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	rss0 := rss()
	fmt.Println("start")
	s, err := blobcache.Open(blobcache.Options{Dir: dir, NoSync: true})
	if err != nil {
		return err
	}
	fmt.Println("opened")
	if probe != "" {
		b, err := s.Get(digest.NewDigestFromEncoded(digest.SHA256, probe))
		if err != nil {
			return fmt.Errorf("first hit: %w", err)
		}
		one := make([]byte, 1)
		if _, err := b.File.ReadAt(one, 0); err != nil {
			return err
		}
		b.Close()
		fmt.Println("hit")
	}
	waitIndexed(s)
	fmt.Println("indexed")
	runtime.GC()
	runtime.GC()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	fmt.Printf("mem %d %d\n", int64(m1.HeapAlloc)-int64(m0.HeapAlloc), rss()-rss0)
	if evict > 0 {
		before := s.Size()
		t := time.Now()
		s.SetMaxSize(before - int64(evict)*blobSize)
		took := time.Since(t)
		fmt.Printf("evict %d %d\n", (before-s.Size())/blobSize, took.Nanoseconds())
	}
	return s.Close()
}

// rss returns the process's resident set (VmRSS) in bytes.
func rss() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// result is what one child run measured; durations from just before the
// process was started.
type result struct {
	opened, hit, indexed time.Duration
	heap, rss            int64
	evicted              int64
	evictTook            time.Duration
	// Caddy with the plugin on the same cache: its first answer to any
	// request, and its first hit served (a blob GET answered 200).
	caddyAnswer, caddyHit time.Duration
}

// listed is an entry of the synthetic cache: its digest's hex and the
// number of the repository whose scope its sidecar holds.
type listed struct{ hex, repo string }

// measure runs one child process and collects its report.
func measure(bin, dir, probe string, evict int, limit time.Duration) (result, error) {
	var r result
	cmd := exec.Command(bin, "child", "-dir", dir, "-probe", probe, "-evict", strconv.Itoa(evict))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return r, err
	}
	timer := time.AfterFunc(limit, func() { cmd.Process.Kill() })
	defer timer.Stop()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		at := time.Since(t0)
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "opened":
			r.opened = at
		case "hit":
			r.hit = at
		case "indexed":
			r.indexed = at
		case "mem":
			r.heap, _ = strconv.ParseInt(f[1], 10, 64)
			r.rss, _ = strconv.ParseInt(f[2], 10, 64)
		case "evict":
			r.evicted, _ = strconv.ParseInt(f[1], 10, 64)
			ns, _ := strconv.ParseInt(f[2], 10, 64)
			r.evictTook = time.Duration(ns)
		}
	}
	if err := cmd.Wait(); err != nil {
		return r, fmt.Errorf("%s child: %w", bin, err)
	}
	if r.indexed == 0 {
		return r, errors.New("child reported no complete index")
	}
	return r, nil
}

// dropCaches empties the page cache (and dentries, inodes), as a
// restarted machine has it: root only.
func dropCaches() error {
	exec.Command("sync").Run()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// build is one store under test: the scale binary built with it and,
// optionally, a Caddy built with it.
type build struct{ name, path, caddy string }

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	sizes := fs.String("sizes", "10000,100000", "entry counts, comma-separated")
	bins := fs.String("bin", "", "builds to compare: name=path[+caddy path],...")
	work := fs.String("work", "", "directory for the synthetic caches (removed after each size)")
	mdOut := fs.String("md", "", "write the markdown table here")
	cold := fs.Bool("cold", os.Geteuid() == 0, "also measure with the page cache dropped (root)")
	limit := fs.Duration("limit", 10*time.Minute, "bound on one measured process")
	fs.Parse(args)
	var builds []build
	for _, b := range strings.Split(*bins, ",") {
		name, path, ok := strings.Cut(b, "=")
		if !ok {
			return fmt.Errorf("-bin wants name=path, got %q", b)
		}
		path, caddy, _ := strings.Cut(path, "+")
		builds = append(builds, build{name, path, caddy})
	}
	if *work == "" {
		return errors.New("-work is required")
	}
	type row struct {
		n         int
		build     string
		mode      string
		r         result
		evictOnly bool
	}
	var rows []row
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	var notes []string
	for _, ns := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(ns))
		if err != nil {
			return err
		}
		dir := filepath.Join(*work, fmt.Sprintf("cache-%d", n))
		t := time.Now()
		if err := generate(dir, n); err != nil {
			return err
		}
		notes = append(notes, fmt.Sprintf("%d entries (and %d tag records) written in %s", n, (n+19)/20, time.Since(t).Round(time.Second)))
		log.Printf("%d entries: generated in %s", n, time.Since(t).Round(time.Second))
		digests, err := os.ReadFile(dir + ".list")
		if err != nil {
			return err
		}
		var all []listed
		for _, line := range strings.Split(strings.TrimSpace(string(digests)), "\n") {
			hexd, repo, _ := strings.Cut(line, " ")
			all = append(all, listed{hexd, repo})
		}
		modes := []string{"warm"}
		if *cold {
			modes = []string{"cold", "warm"}
		}
		for _, mode := range modes {
			if mode == "warm" {
				// The last cold measurement ran on a dropped page cache and
				// stopped at its first hit: read the whole cache once first.
				if _, err := measure(builds[0].path, dir, all[0].hex, 0, *limit); err != nil {
					return err
				}
			}
			for _, b := range builds {
				if mode == "cold" {
					if err := dropCaches(); err != nil {
						return fmt.Errorf("dropping the page cache: %w", err)
					}
				}
				r, err := measure(b.path, dir, all[rng.IntN(len(all))].hex, 0, *limit)
				if err != nil {
					return err
				}
				if b.caddy != "" {
					if mode == "cold" {
						if err := dropCaches(); err != nil {
							return err
						}
					}
					r.caddyAnswer, r.caddyHit, err = caddyFirst(b.caddy, *work, dir, all[rng.IntN(len(all))], *limit)
					if err != nil {
						return err
					}
				}
				log.Printf("%d %s %s: first hit %s, index %s, heap %d B/entry; Caddy: first answer %s, first hit %s",
					n, b.name, mode, r.hit, r.indexed, r.heap/int64(n), r.caddyAnswer, r.caddyHit)
				rows = append(rows, row{n: n, build: b.name, mode: mode, r: r})
			}
		}
		// Eviction last: each build evicts a tenth (at most 20,000) of
		// what is left, once its index is complete.
		for _, b := range builds {
			k := min(n/10, 20000)
			// No probe: an earlier build's eviction may have removed any
			// given entry.
			r, err := measure(b.path, dir, "", k, *limit)
			if err != nil {
				return err
			}
			log.Printf("%d %s: evicted %d in %s", n, b.name, r.evicted, r.evictTook)
			rows = append(rows, row{n: n, build: b.name, mode: "evict", r: r, evictOnly: true})
		}
		t = time.Now()
		os.RemoveAll(dir)
		os.Remove(dir + ".list")
		log.Printf("%d entries: removed in %s", n, time.Since(t).Round(time.Second))
	}

	// The table: one line per size and build.
	var sb strings.Builder
	fmt.Fprintf(&sb, "| entries | store | Caddy: first answer, cold / warm | Caddy: first hit, cold / warm | store: first hit, cold / warm | store: complete index, cold / warm | heap / entry | RSS / entry | eviction |\n")
	fmt.Fprintf(&sb, "|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	get := func(n int, b, mode string) (result, bool) {
		for _, r := range rows {
			if r.n == n && r.build == b && r.mode == mode {
				return r.r, true
			}
		}
		return result{}, false
	}
	dur := func(r result, ok bool, d func(result) time.Duration) string {
		if !ok || d(r) == 0 {
			return "n/a"
		}
		return fmtDur(d(r))
	}
	seen := map[int]bool{}
	for _, rw := range rows {
		if seen[rw.n] {
			continue
		}
		seen[rw.n] = true
		for _, b := range builds {
			c, cok := get(rw.n, b.name, "cold")
			w, wok := get(rw.n, b.name, "warm")
			e, _ := get(rw.n, b.name, "evict")
			evict := "n/a"
			if e.evictTook > 0 {
				evict = fmt.Sprintf("%d/s", int64(float64(e.evicted)/e.evictTook.Seconds()))
			}
			pair := func(d func(result) time.Duration) string {
				return dur(c, cok, d) + " / " + dur(w, wok, d)
			}
			fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %d B | %d B | %s |\n", group(rw.n), b.name,
				pair(func(r result) time.Duration { return r.caddyAnswer }), pair(func(r result) time.Duration { return r.caddyHit }),
				pair(func(r result) time.Duration { return r.hit }), pair(func(r result) time.Duration { return r.indexed }),
				w.heap/int64(rw.n), w.rss/int64(rw.n), evict)
		}
	}
	sb.WriteString("\n")
	for _, n := range notes {
		sb.WriteString("- " + n + "\n")
	}
	fmt.Print(sb.String())
	if *mdOut != "" {
		return os.WriteFile(*mdOut, []byte(sb.String()), 0o644)
	}
	return nil
}

// caddyFirst starts a Caddy build with the plugin, caching in dir, and
// asks it for the entry e (a blob GET, as a client pulls it) every few
// milliseconds from the moment it is started: it returns how long after
// the start Caddy answered at all, and served the blob from its cache.
func caddyFirst(bin, work, dir string, e listed, limit time.Duration) (answer, hit time.Duration, err error) {
	port, err := freePort()
	if err != nil {
		return 0, 0, err
	}
	home, err := os.MkdirTemp(work, "caddy-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(home)
	cf := filepath.Join(home, "Caddyfile")
	conf := fmt.Sprintf(`{
	admin off
	skip_install_trust
	auto_https off
	persist_config off
}

http://127.0.0.1:%d {
	docker_proxy %s {
		cache %s
	}
}
`, port, deadUpstream, dir)
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return 0, 0, err
	}
	logf, err := os.Create(filepath.Join(home, "caddy.log"))
	if err != nil {
		return 0, 0, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "run", "--config", cf, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(home, "data"), "XDG_CONFIG_HOME="+filepath.Join(home, "config"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	url := fmt.Sprintf("http://127.0.0.1:%d/v2/library/app%s/blobs/sha256:%s", port, e.repo, e.hex)
	client := &http.Client{Timeout: limit}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}()
	for time.Since(t0) < limit {
		resp, err := client.Get(url)
		if err != nil {
			time.Sleep(2 * time.Millisecond)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		at := time.Since(t0)
		if answer == 0 {
			answer = at
		}
		if resp.StatusCode == http.StatusOK && len(body) == blobSize && resp.Header.Get("Cache-Status") != "" &&
			strings.Contains(resp.Header.Get("Cache-Status"), "hit") {
			return answer, at, nil
		}
		if resp.StatusCode != http.StatusOK {
			return answer, 0, fmt.Errorf("caddy answered %d to %s: %s (log in %s)", resp.StatusCode, url, body, logf.Name())
		}
		time.Sleep(2 * time.Millisecond)
	}
	return answer, 0, fmt.Errorf("caddy served no hit within %s", limit)
}

// freePort returns a port that was free just now (Caddy binds with
// SO_REUSEPORT, so one in use would be shared silently).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%d ms", d.Milliseconds())
	default:
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
}

// group writes n with thousands separators.
func group(n int) string {
	s := strconv.Itoa(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
