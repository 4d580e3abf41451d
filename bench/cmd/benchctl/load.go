package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// newClient returns an HTTP client that speaks only proto: "h1" (HTTP/1.1,
// plain or TLS) or "h2" (HTTP/2 over TLS). Server certificates are not
// verified: the servers are ours, on loopback, with self-signed or Caddy's
// internal certificates. Each simulated client gets its own client, so its
// own connections, as separate docker daemons would.
func newClient(proto string, conns int) *http.Client {
	tr := &http.Transport{
		DisableCompression:  true,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     30 * time.Second,
		ReadBufferSize:      256 << 10,
		WriteBufferSize:     64 << 10,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	var p http.Protocols
	if proto == "h2" {
		p.SetHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	tr.Protocols = &p
	return &http.Client{Transport: tr}
}

func closeClient(hc *http.Client) {
	if t, ok := hc.Transport.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
}

type FetchResult struct {
	Status      int
	Bytes       int64
	Dur         time.Duration
	Proto       string
	CacheStatus string
	Header      http.Header
	Body        []byte
	Err         error
}

// fetch does one request and reads the body fully, counting bytes and, if
// want is a digest, checking the body's sha256 against it.
func fetch(ctx context.Context, hc *http.Client, method, url, want string, keepBody bool, hdr ...string) FetchResult {
	t0 := time.Now()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return FetchResult{Err: err}
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		return FetchResult{Err: err, Dur: time.Since(t0)}
	}
	defer resp.Body.Close()
	r := FetchResult{Status: resp.StatusCode, Proto: resp.Proto, Header: resp.Header, CacheStatus: resp.Header.Get("Cache-Status")}
	var h hash.Hash
	if want != "" {
		h = sha256.New()
	}
	buf := make([]byte, 256<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			r.Bytes += int64(n)
			if h != nil {
				h.Write(buf[:n])
			}
			if keepBody {
				r.Body = append(r.Body, buf[:n]...)
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				r.Err = err
			}
			break
		}
	}
	r.Dur = time.Since(t0)
	if r.Err == nil && resp.StatusCode/100 != 2 {
		r.Err = fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	if r.Err == nil && h != nil && method == http.MethodGet {
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want {
			r.Err = fmt.Errorf("%s: digest mismatch: got %s, %d bytes", url, got, r.Bytes)
		}
	}
	return r
}

// pull does what docker pull does for one image: HEAD the tag for its
// digest, GET the manifest by digest, then the config and layers, three at
// a time. Every body is checked against its digest.
func pull(ctx context.Context, hc *http.Client, base string, im *Image) (int64, time.Duration, error) {
	t0 := time.Now()
	mbase := base + "/v2/" + im.Repo + "/manifests/"
	r := fetch(ctx, hc, http.MethodHead, mbase+im.Tag, "", false, "Accept", acceptAll)
	if r.Err != nil {
		return 0, time.Since(t0), r.Err
	}
	dg := r.Header.Get("Docker-Content-Digest")
	if dg == "" {
		return 0, time.Since(t0), fmt.Errorf("HEAD %s: no Docker-Content-Digest", mbase+im.Tag)
	}
	if dg != im.ManifestDigest {
		return 0, time.Since(t0), fmt.Errorf("HEAD %s: digest %s, want %s", mbase+im.Tag, dg, im.ManifestDigest)
	}
	r = fetch(ctx, hc, http.MethodGet, mbase+dg, dg, true, "Accept", acceptAll)
	if r.Err != nil {
		return 0, time.Since(t0), r.Err
	}
	total := r.Bytes
	var m struct {
		Config Desc
		Layers []Desc
	}
	if err := json.Unmarshal(r.Body, &m); err != nil {
		return 0, time.Since(t0), fmt.Errorf("manifest: %w", err)
	}
	blobs := append([]Desc{m.Config}, m.Layers...)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ferr error
		sem  = make(chan struct{}, 3)
	)
	for _, b := range blobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r := fetch(ctx, hc, http.MethodGet, base+"/v2/"+im.Repo+"/blobs/"+b.Digest, b.Digest, false)
			mu.Lock()
			total += r.Bytes
			if r.Err != nil && ferr == nil {
				ferr = r.Err
			}
			if r.Err == nil && r.Bytes != b.Size {
				ferr = fmt.Errorf("blob %s: %d bytes, want %d", b.Digest, r.Bytes, b.Size)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total, time.Since(t0), ferr
}

// fanOut starts n clients at once, each fetching url (a blob) and checking
// its digest; it returns every client's time and the total bytes.
func fanOut(ctx context.Context, proto string, n int, url, digest string) ([]time.Duration, int64, []string, error) {
	var (
		wg     sync.WaitGroup
		start  = make(chan struct{})
		durs   = make([]time.Duration, n)
		statii = make([]string, n)
		bytes  atomic.Int64
		mu     sync.Mutex
		ferr   error
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := newClient(proto, 1)
			defer closeClient(hc)
			<-start
			r := fetch(ctx, hc, http.MethodGet, url, digest, false)
			durs[i] = r.Dur
			statii[i] = r.CacheStatus
			bytes.Add(r.Bytes)
			if r.Err != nil {
				mu.Lock()
				if ferr == nil {
					ferr = r.Err
				}
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	return durs, bytes.Load(), statii, ferr
}

// manyPulls runs total pulls of im spread over clients concurrent clients.
func manyPulls(ctx context.Context, base string, im *Image, total, clients int) (time.Duration, error) {
	var (
		wg   sync.WaitGroup
		next atomic.Int64
		mu   sync.Mutex
		ferr error
	)
	t0 := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := newClient("h1", 4)
			defer closeClient(hc)
			for next.Add(1) <= int64(total) {
				if _, _, err := pull(ctx, hc, base, im); err != nil {
					mu.Lock()
					if ferr == nil {
						ferr = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(t0), ferr
}

var (
	wrkRPS  = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkNon2 = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkErrs = regexp.MustCompile(`Socket errors:.*`)
)

// rps measures requests per second of method on url with conns keep-alive
// connections for d: with wrk if there is one, else with Go clients.
func rps(ctx context.Context, wrk, work, method, url string, conns int, d time.Duration) (float64, error) {
	// wrk waits for a body after HEAD responses (it does not know the
	// method it sent), so HEAD always uses the Go load generator.
	if wrk != "" && method != http.MethodHead && os.Getenv("SMALL_TOOL") == "wrk" {
		script := work + "/wrk-" + strings.ToLower(method) + ".lua"
		os.WriteFile(script, []byte(fmt.Sprintf("wrk.method = %q\nwrk.headers[\"Accept\"] = %q\n", method, acceptAll)), 0o644)
		cmd := exec.CommandContext(ctx, wrk, "-t2", "-c"+strconv.Itoa(conns), "-d"+strconv.Itoa(int(d.Seconds()))+"s",
			"--timeout", "10s", "-s", script, url)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("wrk: %v: %s", err, out)
		}
		m := wrkRPS.FindSubmatch(out)
		if m == nil {
			return 0, fmt.Errorf("wrk output: %s", out)
		}
		if n := wrkNon2.FindSubmatch(out); n != nil {
			return 0, fmt.Errorf("wrk: %s non-2xx responses", n[1])
		}
		if e := wrkErrs.Find(out); e != nil {
			return 0, fmt.Errorf("wrk: %s", e)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		if v == 0 {
			return 0, fmt.Errorf("wrk: no requests completed: %s", out)
		}
		return v, nil
	}
	return rawRPS(ctx, method, url, conns, d)
}

// rawRPS is a lean HTTP/1.1 keep-alive load generator for small responses:
// conns connections, each sending method requests back to back for d and
// reading each response (status line, headers, Content-Length body). It
// costs about as little per request as wrk, and unlike wrk it does HEAD.
func rawRPS(ctx context.Context, method, rawURL string, conns int, d time.Duration) (float64, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0, err
	}
	req := []byte(fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\nUser-Agent: benchctl\r\n\r\n", method, u.RequestURI(), u.Host, acceptAll))
	var (
		n    atomic.Int64
		wg   sync.WaitGroup
		ferr atomic.Value
	)
	start := make(chan struct{})
	var stop atomic.Bool
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
			if err != nil {
				ferr.Store(err)
				return
			}
			defer c.Close()
			br := bufio.NewReaderSize(c, 64<<10)
			<-start
			for !stop.Load() && ctx.Err() == nil {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(req); err != nil {
					ferr.Store(err)
					return
				}
				status, cl := 0, int64(-1)
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						ferr.Store(err)
						return
					}
					if status == 0 {
						if len(line) < 12 {
							ferr.Store(fmt.Errorf("bad status line %q", line))
							return
						}
						status, _ = strconv.Atoi(string(line[9:12]))
						continue
					}
					if len(line) <= 2 {
						break
					}
					if len(line) > 15 && strings.EqualFold(string(line[:15]), "content-length:") {
						cl, _ = strconv.ParseInt(strings.TrimSpace(string(line[15:])), 10, 64)
					} else if len(line) > 18 && strings.EqualFold(string(line[:18]), "transfer-encoding:") {
						ferr.Store(fmt.Errorf("chunked response not supported"))
						return
					}
				}
				if status != 200 {
					ferr.Store(fmt.Errorf("%s %s: status %d", method, rawURL, status))
					return
				}
				if method != http.MethodHead {
					if cl < 0 {
						ferr.Store(fmt.Errorf("%s %s: no Content-Length", method, rawURL))
						return
					}
					if _, err := br.Discard(int(cl)); err != nil {
						ferr.Store(err)
						return
					}
				}
				n.Add(1)
			}
		}()
	}
	t0 := time.Now()
	close(start)
	time.Sleep(d)
	stop.Store(true)
	el := time.Since(t0)
	wg.Wait()
	if e, ok := ferr.Load().(error); ok {
		return 0, e
	}
	return float64(n.Load()) / el.Seconds(), nil
}
