// Command loginflood measures what a flood of wrong passwords does to a
// pull from a private docker_proxy site (one with users): 200 wrong logins
// per second for 10 seconds from one address, while a client pulls from
// another. It reports the pull's time under the flood beside its time
// alone, as a ratio, for two pulls: one by a client that logged in before
// (docker login, then docker pull) and one whose login is checked during
// the pull. bench/login-flood builds what it needs and runs it.
//
//	loginflood -caddy BIN -registry BIN -work DIR [-rate 200] [-seconds 10] [-reps 3] [-out FILE]
//
// Everything runs on loopback: distribution's registry as the upstream
// with one generated image, and Caddy with docker_proxy in front of it,
// its users' hashes made by caddy hash-password (bcrypt, its default
// cost). The flood comes from 127.0.0.2 and up (a new address per round,
// so no round inherits another's slowdown), the pulls from 127.0.0.1.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	repo     = "bench/app"
	tag      = "v1"
	password = "bench-pass"
)

func main() {
	caddyBin := flag.String("caddy", "", "Caddy with docker_proxy")
	registryBin := flag.String("registry", "", "distribution's registry binary")
	work := flag.String("work", "", "work directory (must exist)")
	rate := flag.Int("rate", 200, "wrong logins per second")
	seconds := flag.Int("seconds", 10, "length of each flood")
	reps := flag.Int("reps", 3, "floods (each with its pulls) and as many rounds alone")
	layers := flag.Int("layers", 3, "layers of the image")
	layerMiB := flag.Int("layer-mib", 16, "size of each layer")
	out := flag.String("out", "", "write the report (markdown) here too")
	flag.Parse()
	if *caddyBin == "" || *registryBin == "" || *work == "" {
		flag.Usage()
		os.Exit(2)
	}
	h := &harness{work: *work}
	defer h.stopAll()
	if err := h.run(*caddyBin, *registryBin, *rate, *seconds, *reps, *layers, *layerMiB, *out); err != nil {
		h.stopAll()
		log.Fatal(err)
	}
}

type harness struct {
	work  string
	procs []*exec.Cmd
	proxy string // http://127.0.0.1:port
}

func (h *harness) start(name string, env []string, argv ...string) error {
	lf, err := os.Create(filepath.Join(h.work, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	h.procs = append(h.procs, cmd)
	f, err := os.OpenFile(filepath.Join(h.work, "pids"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err == nil {
		fmt.Fprintf(f, "%d %s\n", cmd.Process.Pid, name)
		f.Close()
	}
	return nil
}

func (h *harness) stopAll() {
	for _, c := range h.procs {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
		_, _ = c.Process.Wait()
	}
	h.procs = nil
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitHTTP(url string) error {
	for i := 0; i < 300; i++ {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer", url)
}

// cpuSeconds is the CPU time (user+system) a process has used.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	var ut, st float64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return (ut + st) / 100 // USER_HZ
}

func (h *harness) run(caddyBin, registryBin string, rate, seconds, reps, layers, layerMiB int, out string) error {
	// The upstream, with one image.
	regPort := freePort()
	regCfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%d\n",
		filepath.Join(h.work, "registry"), regPort)
	if err := os.WriteFile(filepath.Join(h.work, "registry.yml"), []byte(regCfg), 0o644); err != nil {
		return err
	}
	if err := h.start("registry", nil, registryBin, "serve", filepath.Join(h.work, "registry.yml")); err != nil {
		return err
	}
	upstream := fmt.Sprintf("http://127.0.0.1:%d", regPort)
	if err := waitHTTP(upstream + "/v2/"); err != nil {
		return err
	}
	if err := pushImage(upstream, layers, layerMiB); err != nil {
		return fmt.Errorf("pushing the image: %w", err)
	}

	// The accounts: one that logs in before its pulls, and one fresh
	// account for each pull whose login is checked during the pull.
	nUsers := 1 + 2*reps
	hashes := make([]string, nUsers)
	log.Printf("hashing %d passwords with caddy hash-password (bcrypt, default cost)", nUsers)
	var wg sync.WaitGroup
	var herr error
	var hmu sync.Mutex
	sem := make(chan struct{}, 2)
	for i := range hashes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			b, err := exec.Command(caddyBin, "hash-password", "--plaintext", password).Output()
			hmu.Lock()
			defer hmu.Unlock()
			if err != nil {
				herr = err
			}
			hashes[i] = strings.TrimSpace(string(b))
		}()
	}
	wg.Wait()
	if herr != nil {
		return fmt.Errorf("caddy hash-password: %w", herr)
	}
	var users strings.Builder
	for i, hash := range hashes {
		fmt.Fprintf(&users, "\t\t\tuser%d %s\n", i, hash)
	}
	port := freePort()
	caddyfile := fmt.Sprintf(`{
	admin off
	skip_install_trust
	persist_config off
}

http://127.0.0.1:%d {
	docker_proxy %s {
		users {
%s		}
		cache %s
	}
}
`, port, upstream, users.String(), filepath.Join(h.work, "cache"))
	if err := os.WriteFile(filepath.Join(h.work, "Caddyfile"), []byte(caddyfile), 0o644); err != nil {
		return err
	}
	env := []string{"XDG_DATA_HOME=" + filepath.Join(h.work, "data"), "XDG_CONFIG_HOME=" + filepath.Join(h.work, "config")}
	if err := h.start("caddy", env, caddyBin, "run", "--config", filepath.Join(h.work, "Caddyfile"), "--adapter", "caddyfile"); err != nil {
		return err
	}
	caddyPID := h.procs[len(h.procs)-1].Process.Pid
	h.proxy = fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitHTTP(h.proxy + "/v2/"); err != nil {
		return err
	}

	// user0 logs in (docker login) and warms the cache: every measured
	// pull is then served from the cache, the same work each time.
	if _, err := pullAs(h.proxy, "user0"); err != nil {
		return fmt.Errorf("warm-up pull: %w", err)
	}

	med := func(ds []time.Duration) time.Duration {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	// Per round: pullsPerRound pulls by the logged-in client, alone and
	// under the flood (after the fresh login's pull), and one pull whose
	// login is checked, one second into the flood.
	const pullsPerRound = 20
	var alone, flooded, aloneFresh, floodedFresh []time.Duration
	var counts = map[int]int{}
	var floodCPU, aloneCPU float64
	nextFresh := 1
	for r := 0; r < reps; r++ {
		// Alone: the logged-in client's pulls, then a fresh login's.
		c0 := cpuSeconds(caddyPID)
		t0 := time.Now()
		for range pullsPerRound {
			d, err := pullAs(h.proxy, "user0")
			if err != nil {
				return err
			}
			alone = append(alone, d)
		}
		d, err := pullAs(h.proxy, fmt.Sprintf("user%d", nextFresh))
		nextFresh++
		if err != nil {
			return err
		}
		aloneFresh = append(aloneFresh, d)
		aloneCPU += (cpuSeconds(caddyPID) - c0) / time.Since(t0).Seconds()

		// Under the flood: from a new address each round.
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds)*time.Second)
		src := fmt.Sprintf("127.0.0.%d", 2+r)
		c0 = cpuSeconds(caddyPID)
		t0 = time.Now()
		done := make(chan map[int]int)
		go func() { done <- flood(ctx, h.proxy, src, rate) }()
		time.Sleep(time.Second) // the flood is in full swing
		d, err = pullAs(h.proxy, fmt.Sprintf("user%d", nextFresh))
		nextFresh++
		if err != nil {
			cancel()
			return fmt.Errorf("pull with a fresh login under the flood: %w", err)
		}
		floodedFresh = append(floodedFresh, d)
		for range pullsPerRound {
			d, err := pullAs(h.proxy, "user0")
			if err != nil {
				cancel()
				return fmt.Errorf("pull under the flood: %w", err)
			}
			flooded = append(flooded, d)
		}
		for k, v := range <-done {
			counts[k] += v
		}
		cancel()
		floodCPU += (cpuSeconds(caddyPID) - c0) / time.Since(t0).Seconds()
		log.Printf("round %d: logged-in pulls alone %v, under the flood %v; fresh login alone %v, under the flood %v",
			r+1, med(alone[len(alone)-pullsPerRound:]), med(flooded[len(flooded)-pullsPerRound:]), aloneFresh[r], floodedFresh[r])
	}

	ratio := func(a, b []time.Duration) float64 { return med(b).Seconds() / med(a).Seconds() }
	total := 0
	for _, v := range counts {
		total += v
	}
	var codes []string
	for k, v := range counts {
		codes = append(codes, fmt.Sprintf("%d: %d", k, v))
	}
	sort.Strings(codes)
	verdict := func(r float64) string {
		if r <= 1.5 {
			return "pass"
		}
		return "**miss**"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d wrong logins per second for %d s from one address (127.0.0.x), while a client on 127.0.0.1 pulls a %d x %d MiB image from the cache of a private site (`users` with %d bcrypt hashes of `caddy hash-password`'s default cost). %d rounds, each alone then under a flood: in each, %d pulls by a client that logged in before, and one pull whose login is checked during the pull, one second into the flood. Medians; GOMAXPROCS of Caddy: the machine's %d CPUs.\n\n",
		rate, seconds, layers, layerMiB, nUsers, reps, pullsPerRound, runtime.NumCPU())
	fmt.Fprintf(&b, "| pull | alone | under the flood | ratio | target |\n|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| logged in before (docker login, then pull) | %.3f s | %.3f s | %.2fx | ≤1.5x: %s |\n",
		med(alone).Seconds(), med(flooded).Seconds(), ratio(alone, flooded), verdict(ratio(alone, flooded)))
	fmt.Fprintf(&b, "| its login checked during the pull | %.3f s | %.3f s | %.2fx | ≤1.5x: %s |\n\n",
		med(aloneFresh).Seconds(), med(floodedFresh).Seconds(), ratio(aloneFresh, floodedFresh), verdict(ratio(aloneFresh, floodedFresh)))
	fmt.Fprintf(&b, "Answers to the %d wrong logins (status: count): %s. Caddy's CPU use: %.2f cores during the floods, %.2f during the pulls alone.\n",
		total, strings.Join(codes, ", "), floodCPU/float64(reps), aloneCPU/float64(reps))
	fmt.Print(b.String())
	if out != "" {
		return os.WriteFile(out, []byte(b.String()), 0o644)
	}
	return nil
}

// flood sends rate wrong logins per second from src until ctx ends, and
// counts the answers by status (0: no answer).
func flood(ctx context.Context, proxy, src string, rate int) map[int]int {
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	tr := &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 256}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	var n atomic.Int64
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return counts
		case <-tick.C:
		}
		i := n.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, proxy+"/v2/auth?service=bench&scope=repository:"+repo+":pull", nil)
			req.SetBasicAuth("user0", fmt.Sprintf("wrong-%d", i))
			status := 0
			if resp, err := hc.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			mu.Lock()
			counts[status]++
			mu.Unlock()
		}()
	}
}

// pullAs pulls the image as a docker client does, logging in as user:
// /v2/ (401), a token from the realm with the password, the manifest by
// tag, then config and layers three at a time, each checked against its
// digest. It returns the pull's time.
func pullAs(proxy, user string) (time.Duration, error) {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer hc.CloseIdleConnections()
	t0 := time.Now()
	resp, err := hc.Get(proxy + "/v2/")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		return 0, fmt.Errorf("/v2/: %s, want 401", resp.Status)
	}
	req, _ := http.NewRequest(http.MethodGet, proxy+"/v2/auth?service=bench&scope=repository:"+repo+":pull", nil)
	req.SetBasicAuth(user, password)
	resp, err = hc.Do(req)
	if err != nil {
		return 0, err
	}
	var tok struct{ Token string }
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || tok.Token == "" {
		return 0, fmt.Errorf("login as %s: %s %v", user, resp.Status, err)
	}
	get := func(path, accept string) ([]byte, string, error) {
		req, _ := http.NewRequest(http.MethodGet, proxy+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok.Token)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		sum := sha256.Sum256(body)
		return body, "sha256:" + hex.EncodeToString(sum[:]), err
	}
	raw, _, err := get("/v2/"+repo+"/manifests/"+tag, "application/vnd.oci.image.manifest.v1+json")
	if err != nil {
		return 0, err
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return 0, err
	}
	digests := []string{m.Config.Digest}
	for _, l := range m.Layers {
		digests = append(digests, l.Digest)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(digests))
	sem := make(chan struct{}, 3)
	for _, d := range digests {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, got, err := get("/v2/"+repo+"/blobs/"+d, "")
			if err == nil && got != d {
				err = fmt.Errorf("blob %s: bytes hash to %s", d, got)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}

// pushImage pushes an OCI image of random layers to the registry.
func pushImage(upstream string, layers, layerMiB int) error {
	put := func(data []byte) (string, error) {
		sum := sha256.Sum256(data)
		d := "sha256:" + hex.EncodeToString(sum[:])
		resp, err := http.Post(upstream+"/v2/"+repo+"/blobs/uploads/", "", nil)
		if err != nil {
			return "", err
		}
		resp.Body.Close()
		loc := resp.Header.Get("Location")
		if resp.StatusCode != http.StatusAccepted || loc == "" {
			return "", fmt.Errorf("upload start: %s", resp.Status)
		}
		if !strings.HasPrefix(loc, "http") {
			loc = upstream + loc
		}
		sep := "?"
		if strings.Contains(loc, "?") {
			sep = "&"
		}
		req, _ := http.NewRequest(http.MethodPut, loc+sep+"digest="+d, bytes.NewReader(data))
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return "", fmt.Errorf("upload: %s", resp.Status)
		}
		return d, nil
	}
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	var ls []desc
	for i := 0; i < layers; i++ {
		data := make([]byte, layerMiB<<20)
		if _, err := rand.Read(data); err != nil {
			return err
		}
		d, err := put(data)
		if err != nil {
			return err
		}
		ls = append(ls, desc{"application/vnd.oci.image.layer.v1.tar", d, len(data)})
	}
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cd, err := put(config)
	if err != nil {
		return err
	}
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc{"application/vnd.oci.image.config.v1+json", cd, len(config)},
		"layers":        ls,
	})
	req, _ := http.NewRequest(http.MethodPut, upstream+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(manifest))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("manifest: %s", resp.Status)
	}
	return nil
}
