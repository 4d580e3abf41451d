package testupstream

import (
	"net/http"
	"sync"
)

// Listener names one of the upstream's three hosts.
type Listener int

const (
	RegistryListener Listener = iota
	RealmListener
	ObjectStoreListener
	listenerCount
)

func (l Listener) String() string {
	switch l {
	case RegistryListener:
		return "registry"
	case RealmListener:
		return "realm"
	case ObjectStoreListener:
		return "object store"
	}
	return "unknown listener"
}

// Recorded is one request a listener received, kept while
// Options.RecordRequests is set: what a proxy sent to which host, so that
// tests can tell where credentials and client headers went.
type Recorded struct {
	Method string
	// URI is the request URI, query included (object store signatures).
	URI    string
	Header http.Header
}

// observer records requests and adds response headers, per listener.
type observer struct {
	mu       sync.Mutex
	record   bool
	requests [listenerCount][]Recorded
	extra    [listenerCount]http.Header
}

// Requests returns the requests l received so far, oldest first. Empty
// unless Options.RecordRequests is set.
func (u *Upstream) Requests(l Listener) []Recorded {
	u.obs.mu.Lock()
	defer u.obs.mu.Unlock()
	return append([]Recorded(nil), u.obs.requests[l]...)
}

// AddResponseHeaders makes l add h to every response it sends from now on
// (nil stops it), before its handler sets its own: a way to send headers a
// well-behaved registry would not, such as hop-by-hop ones (Connection and
// the headers it names, Keep-Alive, Proxy-Authenticate), and see whether a
// proxy passes them on. Transfer-Encoding and Trailer are not for this:
// net/http gives them a meaning of its own.
func (u *Upstream) AddResponseHeaders(l Listener, h http.Header) {
	u.obs.mu.Lock()
	defer u.obs.mu.Unlock()
	u.obs.extra[l] = h.Clone()
}

// observe wraps the handler of listener l.
func (u *Upstream) observe(l Listener, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.obs.mu.Lock()
		if u.obs.record {
			u.obs.requests[l] = append(u.obs.requests[l], Recorded{Method: r.Method, URI: r.URL.RequestURI(), Header: r.Header.Clone()})
		}
		for k, vs := range u.obs.extra[l] {
			w.Header()[k] = append([]string(nil), vs...)
		}
		u.obs.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}
