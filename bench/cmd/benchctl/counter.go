package main

import (
	"encoding/json"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The counter is a small reverse proxy in front of the upstream registry.
// Every system under test (docker_proxy, distribution's proxy mode, nginx
// proxy_cache) and the direct pulls reach the upstream through it, so it
// sees exactly what a rate-limited upstream such as Docker Hub would count:
// manifest GETs and HEADs, blob GETs and the bytes of every body. It can
// also limit the upstream's bandwidth (-rate, bytes per second over all
// connections) to model a WAN link.
//
//	GET /__bench/counts          the counters as JSON
//	GET /__bench/counts?reset=1  the counters, then zero them

var pathRE = regexp.MustCompile(`^/v2/(.+)/(manifests|blobs)/([^/]+)$`)

type counterStat struct {
	N     int64 `json:"n"`
	Bytes int64 `json:"bytes"`
}

// Counts maps "METHOD kind" (kind: manifest-tag, manifest-digest, blob,
// base, other) to requests and body bytes.
type Counts map[string]*counterStat

func (c Counts) get(k string) counterStat {
	if s := c[k]; s != nil {
		return *s
	}
	return counterStat{}
}

func (c Counts) total() (n int64) {
	for _, s := range c {
		n += s.N
	}
	return
}

func classify(r *http.Request) string {
	m := pathRE.FindStringSubmatch(r.URL.Path)
	switch {
	case m != nil && m[2] == "blobs":
		return r.Method + " blob"
	case m != nil && strings.HasPrefix(m[3], "sha256:"):
		return r.Method + " manifest-digest"
	case m != nil:
		return r.Method + " manifest-tag"
	case r.URL.Path == "/v2/" || r.URL.Path == "/v2":
		return r.Method + " base"
	}
	return r.Method + " other"
}

type limiter struct {
	mu   sync.Mutex
	rate float64 // bytes per second; 0 = unlimited
	next time.Time
}

func (l *limiter) wait(n int) {
	if l == nil {
		return
	}
	l.mu.Lock()
	if l.rate <= 0 {
		l.mu.Unlock()
		return
	}
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	at := l.next
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	l.mu.Unlock()
	if d := time.Until(at); d > 0 {
		time.Sleep(d)
	}
}

type countingBody struct {
	io.ReadCloser
	stat *counterStat
	mu   *sync.Mutex
	lim  *limiter
}

func (b *countingBody) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.lim.wait(n)
		b.mu.Lock()
		b.stat.Bytes += int64(n)
		b.mu.Unlock()
	}
	return n, err
}

type bufPool struct{ p sync.Pool }

func (b *bufPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufPool) Put(x []byte) { b.p.Put(&x) }

func counterMain(args []string) {
	fs := flag.NewFlagSet("counter", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	target := fs.String("target", "", "upstream registry URL")
	rate := fs.Float64("rate", 0, "upstream bandwidth limit in bytes/s (0: none)")
	fs.Parse(args)
	tu, err := url.Parse(*target)
	if err != nil || *target == "" {
		log.Fatalf("counter: bad -target %q", *target)
	}
	var mu sync.Mutex
	counts := Counts{}
	lim := &limiter{rate: *rate}
	pool := &bufPool{p: sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(tu)
			pr.Out.Host = tu.Host
		},
		Transport: &http.Transport{
			MaxIdleConnsPerHost: 512, DisableCompression: true,
			DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		},
		BufferPool:    pool,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			k := classify(resp.Request)
			mu.Lock()
			s := counts[k]
			if s == nil {
				s = &counterStat{}
				counts[k] = s
			}
			mu.Unlock()
			resp.Body = &countingBody{ReadCloser: resp.Body, stat: s, mu: &mu, lim: lim}
			return nil
		},
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/__bench/rate" {
			v, _ := strconv.ParseFloat(r.URL.Query().Get("bps"), 64)
			lim.mu.Lock()
			lim.rate = v
			lim.mu.Unlock()
			return
		}
		if r.URL.Path == "/__bench/counts" {
			mu.Lock()
			b, _ := json.Marshal(counts)
			if r.URL.Query().Get("reset") != "" {
				counts = Counts{}
			}
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.Write(b)
			return
		}
		k := classify(r)
		mu.Lock()
		s := counts[k]
		if s == nil {
			s = &counterStat{}
			counts[k] = s
		}
		s.N++
		mu.Unlock()
		rp.ServeHTTP(w, r)
	})
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(l, h))
}
