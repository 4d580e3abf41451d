package dockerproxy

// What the handler observes of each request (its outcome, its bytes, the
// upstream requests it made) for the metrics and the access log.

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// serveObserved serves one registry request, then counts it and sets the
// access log's placeholders from its outcome. A response aborted midway
// (a fill whose bytes proved wrong) is counted by neither.
func (h *Handler) serveObserved(w http.ResponseWriter, r *http.Request) {
	cw := countingWriters.Get().(*countingWriter)
	cw.ResponseWriter, cw.n = w, 0
	res := h.proxy.Serve(cw, r)
	h.metrics.observe(res, cw.n)
	cw.ResponseWriter = nil
	countingWriters.Put(cw)
	setPlaceholders(r, res)
}

// countingWriter counts the body bytes of a response. Its ReadFrom passes
// the reader on (a file goes out with sendfile) and counts what went.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

var countingWriters = sync.Pool{New: func() any { return new(countingWriter) }}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// ReadFrom hands r to the underlying writer's ReadFrom, or else copies
// with a pooled buffer (as the request path's own writer does: the
// standard library's fallback would allocate one per call).
func (w *countingWriter) ReadFrom(r io.Reader) (n int64, err error) {
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		buf := copyBuffers.Get().(*[]byte)
		n, err = io.CopyBuffer(w.ResponseWriter, struct{ io.Reader }{r}, *buf)
		copyBuffers.Put(buf)
	}
	w.n += n
	return n, err
}

// Unwrap gives http.ResponseController the writer beneath.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// The placeholders a request's access log may take with log_append, for
// example `log_append upstream {http.docker_proxy.upstream}`. The proxy
// account ({http.docker_proxy.account}) is set where the request's
// account is learnt (users.go).
const (
	placeholderUpstream   = "http.docker_proxy.upstream"
	placeholderRepository = "http.docker_proxy.repository"
	placeholderCache      = "http.docker_proxy.cache"
	placeholderKind       = "http.docker_proxy.kind"
	placeholderAccount    = "http.docker_proxy.account"
)

// setPlaceholders gives the request's placeholders from its result: the
// upstream's name, the repository as the client named it, the outcome as
// the metrics label it, the request kind. A request routed nowhere has no
// upstream; one whose path named no repository, none. One provider for
// all of them, asked only when a placeholder is used (the access log's
// log_append): a request costs one small allocation, not one per field.
func setPlaceholders(r *http.Request, res registry.Result) {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return
	}
	repl.Map(func(key string) (any, bool) {
		switch key {
		case placeholderUpstream:
			return res.Upstream, true
		case placeholderRepository:
			return res.Repository, true
		case placeholderCache:
			return res.Outcome.Label(), true
		case placeholderKind:
			return kindLabel(res.Kind), true
		}
		return nil, false
	})
}

// upstreamObserver counts the upstream requests a handler's client makes
// (registry.ObserveTransport).
type upstreamObserver struct{ c *collectors }

// Sent counts one request by its status class, reads the quota of a
// manifest answer, and counts its body's bytes as they are read.
func (o upstreamObserver) Sent(call registry.UpstreamCall, resp *http.Response, err error) {
	up := upstreamLabel(call.Upstream)
	o.c.upstreamRequests.WithLabelValues(up, kindLabel(call.Kind), statusClass(resp, err)).Inc()
	if err != nil {
		return
	}
	if call.Kind == registry.KindManifest {
		if rl, ok := registry.ParseRateLimit(resp.Header); ok {
			o.c.quotaLimit.WithLabelValues(up, call.Identity).Set(float64(rl.Limit))
			o.c.quotaRemaining.WithLabelValues(up, call.Identity).Set(float64(rl.Remaining))
			o.c.quotaWindow.WithLabelValues(up, call.Identity).Set(rl.Window.Seconds())
		}
	}
	if resp.Body != nil && resp.Body != http.NoBody {
		resp.Body = &countingBody{ReadCloser: resp.Body, counter: o.c.upstreamBytes.WithLabelValues(up)}
	}
}

// statusClass is the status label of an upstream request: its class, 429
// apart (the upstream's quota), and for no answer whether no connection
// could be made.
func statusClass(resp *http.Response, err error) string {
	switch {
	case err != nil && isConnectFailure(err):
		return "connect_error"
	case err != nil:
		return "error"
	case resp.StatusCode == http.StatusTooManyRequests:
		return "429"
	}
	return strconv.Itoa(resp.StatusCode/100) + "xx"
}

// isConnectFailure reports whether err is a failure to connect: refused,
// unreachable, a name that does not resolve, a dial that timed out.
func isConnectFailure(err error) bool {
	// Caddy's transport says so of its own dial errors, hiding their cause.
	var dialErr reverseproxy.DialError
	if errors.As(err, &dialErr) {
		return true
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// countingBody counts the bytes read of an upstream body.
type countingBody struct {
	io.ReadCloser
	counter prometheus.Counter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.counter.Add(float64(n))
	}
	return n, err
}

// fillObserver reports a handler's completed fills to its metrics.
func (m *metrics) fillObserver() func(upstream string, size int64, took time.Duration) {
	return func(upstream string, size int64, took time.Duration) {
		m.filled(upstream, size, took.Seconds())
	}
}

// storeCollector reads the live handlers' stores at scrape time, one set
// of series per cache directory, whatever the number of handlers (and,
// during a reload, configs) that share it.
type storeCollector struct {
	bytes, maxBytes, entries, tagRecords, fills, evictions, sharedTierErrors *prometheus.Desc
}

func newStoreCollector() *storeCollector {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("caddy_docker_proxy_"+name, help, []string{"dir"}, nil)
	}
	return &storeCollector{
		bytes:            desc("cache_bytes", "Bytes the cache directory holds against its max_size: entries and tag records."),
		maxBytes:         desc("cache_max_bytes", "The cache directory's max_size; 0 when unbounded."),
		entries:          desc("cache_entries", "Entries (blobs and manifests by digest) in the cache directory."),
		tagRecords:       desc("cache_tag_records", "Tag records (a tag's last known digest) in the cache directory."),
		fills:            desc("fills_in_progress", "Blob fills in progress in the cache directory (waiting for the upstream's answer or copying its bytes)."),
		evictions:        desc("cache_evictions_total", "Entries and tag records evicted from the cache directory to stay under max_size, since it was opened."),
		sharedTierErrors: desc("shared_tier_errors_total", "Operations of the cache directory's shared tier (S3) that failed, since it was opened."),
	}
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.bytes, c.maxBytes, c.entries, c.tagRecords, c.fills, c.evictions, c.sharedTierErrors} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	for _, h := range live.all() {
		if h.dirCache == nil || h.cacheDir == "" || seen[h.cacheDir] {
			continue
		}
		seen[h.cacheDir] = true
		s := h.dirCache.store.Stats()
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, h.cacheDir)
		}
		gauge(c.bytes, float64(s.Bytes))
		gauge(c.maxBytes, float64(s.MaxSize))
		gauge(c.entries, float64(s.Entries))
		gauge(c.tagRecords, float64(s.TagRecords))
		gauge(c.fills, float64(s.Fills))
		ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(s.Evictions), h.cacheDir)
		ch <- prometheus.MustNewConstMetric(c.sharedTierErrors, prometheus.CounterValue, float64(s.SharedTierErrors), h.cacheDir)
	}
}
