package testupstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Options configure an Upstream. The zero value is usable.
type Options struct {
	// Service is the token service name in challenges; default "registry.test".
	Service string
	// RealmHost, if set, replaces 127.0.0.1 as the host name of the realm
	// URL advertised in WWW-Authenticate (the port stays the realm
	// listener's). go-containerregistry >= v0.22 refuses a realm on a private
	// IP literal other than the registry's own host:port, so tests that pull
	// with ggcr directly set this to a made-up name (e.g. "auth.test") and
	// dial it with HostMapTransport. Leave it empty for the proxy's tests.
	RealmHost string
	// Fixed listen addresses ("127.0.0.1:PORT"); empty means a random port
	// on 127.0.0.1.
	RegistryAddr, RealmAddr, ObjectStoreAddr string
	// TokenTTL is the life of issued tokens (and expires_in); default 300s.
	TokenTTL time.Duration
	// WideAnonymousTokens makes an anonymous token good for pulling every
	// public repository, whatever scope it was asked for (as registries
	// whose anonymous tokens are not per repository do). Default: a token
	// pulls the repositories of its scopes only, as on Docker Hub.
	WideAnonymousTokens bool
	// TokenBytes is the number of random bytes in a token, which is
	// hex-encoded; default 24. Docker Hub's tokens are JWTs of a few
	// kilobytes: measurements of memory set this to match.
	TokenBytes int
	// RedirectTTL is the life of signed object-store URLs; default 10m.
	RedirectTTL time.Duration
	// RedirectBlobHEADs makes the registry answer blob HEADs with a
	// redirect to the object store too, as distribution does with its
	// storage redirect on, instead of answering them itself.
	RedirectBlobHEADs bool
	// SignedForGETOnly makes the object store refuse HEAD of its signed
	// URLs, as S3 does with a URL presigned for GET (the method is part of
	// the signature).
	SignedForGETOnly bool
	// RateLimit is the limit advertised in ratelimit-limit; default 100.
	RateLimit int
	// EnforceRateLimit makes manifest GETs answer 429 once RateLimit GETs
	// were made since the last Counters.Reset, as Docker Hub does. Off by
	// default so that long tests are not surprised.
	EnforceRateLimit bool
	// RecordRequests keeps every request each listener receives, for
	// Requests. Off by default: benchmarks make millions.
	RecordRequests bool
	// Logf, if set, receives one line per request and the inner registry's
	// log. Default: silent.
	Logf func(format string, args ...any)
}

// Upstream is a running Docker-Hub-like registry. Create it with Start or New.
type Upstream struct {
	// URL is the registry base URL, "http://127.0.0.1:PORT" (no trailing slash).
	URL string
	// Host is the registry's "127.0.0.1:PORT".
	Host string
	// RealmURL is the realm base URL, "http://127.0.0.1:PORT"; tokens are at
	// RealmURL+"/token".
	RealmURL string
	// RealmAddr is the realm listener's "127.0.0.1:PORT".
	RealmAddr string
	// Realm is the realm advertised in challenges (uses Options.RealmHost).
	Realm string
	// ObjectStoreURL is the object store base URL, "http://127.0.0.1:PORT".
	ObjectStoreURL string
	// Service is the token service name.
	Service string
	// Counters counts requests; Faults injects failures.
	Counters *Counters
	Faults   *Faults

	opts     Options
	inner    http.Handler // ggcr registry, no auth
	blobs    *blobStore
	auth     *authState
	signKey  []byte
	registry *listener
	realm    *listener
	objects  *listener
	mirror   atomic.Pointer[Mirror] // set by StartMirror
	obs      observer
}

// Start starts an Upstream for a test and closes it with t.Cleanup. It calls
// t.Fatal if it cannot start.
func Start(t testing.TB, opts Options) *Upstream {
	t.Helper()
	u, err := New(opts)
	if err != nil {
		t.Fatalf("testupstream: %v", err)
	}
	t.Cleanup(u.Close)
	return u
}

// New starts an Upstream outside of a test (benchmark harnesses). Call Close.
func New(opts Options) (*Upstream, error) {
	if opts.Service == "" {
		opts.Service = "registry.test"
	}
	if opts.TokenBytes <= 0 {
		opts.TokenBytes = 24
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = 300 * time.Second
	}
	if opts.RedirectTTL <= 0 {
		opts.RedirectTTL = 10 * time.Minute
	}
	if opts.RateLimit <= 0 {
		opts.RateLimit = 100
	}
	u := &Upstream{
		Service:  opts.Service,
		Counters: &Counters{},
		opts:     opts,
		blobs:    newBlobStore(),
		auth:     newAuthState(),
		signKey:  randomBytes(32),
	}
	u.Faults = newFaults(u)
	logger := log.New(io.Discard, "", 0)
	if opts.Logf != nil {
		logger = log.New(logfWriter(opts.Logf), "registry: ", 0)
	}
	u.inner = registry.New(
		registry.Logger(logger),
		registry.WithBlobHandler(registryHandler{u.blobs}),
		registry.WithReferrersSupport(true),
	)
	u.obs.record = opts.RecordRequests
	u.registry = &listener{addr: orLocal(opts.RegistryAddr), handler: u.countingHandler(&u.Counters.registryReqs, u.observe(RegistryListener, http.HandlerFunc(u.serveRegistry)))}
	u.realm = &listener{addr: orLocal(opts.RealmAddr), handler: u.countingHandler(&u.Counters.realmReqs, u.observe(RealmListener, http.HandlerFunc(u.serveRealm)))}
	u.objects = &listener{addr: orLocal(opts.ObjectStoreAddr), handler: u.countingHandler(&u.Counters.objectReqs, u.observe(ObjectStoreListener, http.HandlerFunc(u.serveObject)))}
	for _, l := range []*listener{u.registry, u.realm, u.objects} {
		if err := l.start(); err != nil {
			u.Close()
			return nil, err
		}
	}
	u.Host = u.registry.addr
	u.URL = "http://" + u.registry.addr
	u.RealmAddr = u.realm.addr
	u.RealmURL = "http://" + u.realm.addr
	u.ObjectStoreURL = "http://" + u.objects.addr
	realmHost := u.realm.addr
	if opts.RealmHost != "" {
		_, port, _ := net.SplitHostPort(u.realm.addr)
		realmHost = net.JoinHostPort(opts.RealmHost, port)
	}
	u.Realm = "http://" + realmHost + "/token"
	return u, nil
}

// Close stops all listeners and releases held blob bodies. Safe to call twice.
func (u *Upstream) Close() {
	u.Faults.releaseAll()
	for _, l := range []*listener{u.registry, u.realm, u.objects} {
		if l != nil {
			l.stop()
		}
	}
}

func orLocal(addr string) string {
	if addr == "" {
		return "127.0.0.1:0"
	}
	return addr
}

func (u *Upstream) countingHandler(c interface{ Add(int64) int64 }, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.Add(1)
		if u.opts.Logf != nil {
			u.opts.Logf("testupstream: %s %s%s", r.Method, r.Host, r.URL.RequestURI())
		}
		h.ServeHTTP(w, r)
	})
}

type logfWriter func(string, ...any)

func (f logfWriter) Write(p []byte) (int, error) {
	f("%s", p)
	return len(p), nil
}

// listener is one HTTP server that can be stopped and started again on the
// same port, which is how "down" refuses connections instead of accepting
// and dropping them.
type listener struct {
	mu      sync.Mutex
	addr    string
	handler http.Handler
	srv     *http.Server
	ln      net.Listener
}

func (l *listener) start() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.srv != nil {
		return nil
	}
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return fmt.Errorf("testupstream: listen %s: %w", l.addr, err)
	}
	l.addr = ln.Addr().String()
	srv := &http.Server{
		Handler:           l.handler,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	l.srv, l.ln = srv, ln
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = err // the listener was closed under us; nothing to report
		}
	}()
	return nil
}

func (l *listener) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.srv == nil {
		return
	}
	// Close the socket here, not only through srv.Close: if Serve has not
	// registered the listener yet, srv.Close would miss it and the port
	// would keep accepting (then resetting) connections for a moment.
	_ = l.ln.Close()
	_ = l.srv.Close()
	l.srv, l.ln = nil, nil
}

// HostMapTransport returns an http.Transport that dials made-up host names
// to real addresses: hosts maps "name" or "name:port" to "127.0.0.1:PORT".
// Unmapped hosts are dialed as is. Tests that pull with ggcr directly use it
// to reach a realm advertised under Options.RealmHost.
func HostMapTransport(hosts map[string]string) *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if to, ok := hosts[addr]; ok {
			return d.DialContext(ctx, network, to)
		}
		if h, _, err := net.SplitHostPort(addr); err == nil {
			if to, ok := hosts[h]; ok {
				return d.DialContext(ctx, network, to)
			}
		}
		return d.DialContext(ctx, network, addr)
	}
	return t
}
