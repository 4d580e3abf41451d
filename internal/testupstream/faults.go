package testupstream

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Faults are switches that make the upstream misbehave. Every switch is safe
// to flip while requests run; blob-body switches (cut, corrupt, slow, hold)
// are consulted for every chunk written, so flipping one takes effect in the
// middle of a body already being sent.
type Faults struct {
	u *Upstream

	cutAfter     atomic.Int64 // <0: off
	chunked      atomic.Bool
	listCutAfter atomic.Int64 // <0: off
	listChunked  atomic.Bool
	corrupt      atomic.Bool
	regStatus    atomic.Int64
	objStatus    atomic.Int64
	blobRedirect atomic.Pointer[string]
	tooMany      atomic.Bool
	retryAfter   atomic.Int64 // seconds
	slowBPS      atomic.Int64
	hold         atomic.Pointer[Hold]
	hang         atomic.Pointer[chan struct{}]
	downMu       sync.Mutex
	down         bool
	liveHolds    sync.Map // *Hold -> struct{}, released on Close
}

func newFaults(u *Upstream) *Faults {
	f := &Faults{u: u}
	f.cutAfter.Store(-1)
	f.listCutAfter.Store(-1)
	f.retryAfter.Store(60)
	return f
}

// CutBlobsAfter makes the object store send at most n body bytes of every
// blob response and then close the connection abruptly (hijack and close),
// so the client sees an unexpected EOF, never a clean short body. n < 0
// turns the fault off.
func (f *Faults) CutBlobsAfter(n int64) { f.cutAfter.Store(n) }

// ChunkBlobs makes the object store send blob bodies without Content-Length,
// in chunked transfer coding, as CDNs do for objects they stream from their
// origin. With CutBlobsAfter, the client then learns of the cut only from
// the chunked coding left unfinished: a proxy that relays such a body must
// abort its own response, since ending it cleanly would look complete.
func (f *Faults) ChunkBlobs(on bool) { f.chunked.Store(on) }

// ChunkLists makes the registry send tags/list bodies without
// Content-Length, in chunked transfer coding, as registries that stream big
// tag lists do.
func (f *Faults) ChunkLists(on bool) { f.listChunked.Store(on) }

// CutListsAfter makes the registry send at most n body bytes of every
// tags/list response and then close the connection abruptly, so the client
// sees an unexpected EOF, never a clean short body. n < 0 turns it off.
func (f *Faults) CutListsAfter(n int64) { f.listCutAfter.Store(n) }

// CorruptBlobs makes the object store flip the last byte of every blob it
// serves (same length, wrong content, wrong digest). The last byte is chosen
// because a cache can only notice it after it has streamed everything else,
// which is the hardest case to get right. A Range that does not include the
// blob's last byte is served correctly.
func (f *Faults) CorruptBlobs(on bool) { f.corrupt.Store(on) }

// SetRegistryStatus makes the registry listener answer every request with
// code and a registry JSON error body, before authentication. 0 turns it off.
func (f *Faults) SetRegistryStatus(code int) { f.regStatus.Store(int64(code)) }

// SetObjectStoreStatus makes the object store answer every request with
// code and an XML error body. 0 turns it off.
func (f *Faults) SetObjectStoreStatus(code int) { f.objStatus.Store(int64(code)) }

// RedirectBlobsTo makes the registry send blob GETs to location (as is:
// any URL, even one that does not parse) instead of a signed object-store
// URL, to stand for a CDN that is down, refuses, or sends the request
// around in circles. "" turns it off.
func (f *Faults) RedirectBlobsTo(location string) {
	if location == "" {
		f.blobRedirect.Store(nil)
		return
	}
	f.blobRedirect.Store(&location)
}

// RateLimit makes authorized manifest GETs answer 429 TOOMANYREQUESTS with
// ratelimit-remaining: 0 and Retry-After (whole seconds), as Docker Hub does
// when its pull limit is reached. Manifest HEADs keep working, as on Docker
// Hub. on=false turns it off.
func (f *Faults) RateLimit(on bool, retryAfter time.Duration) {
	f.retryAfter.Store(int64(retryAfter / time.Second))
	f.tooMany.Store(on)
}

// SlowBlobs limits every blob body to bytesPerSecond (0 turns it off). Useful
// to keep a fill in progress while more clients join it; for deterministic
// join-halfway tests prefer HoldBlobs.
func (f *Faults) SlowBlobs(bytesPerSecond int64) { f.slowBPS.Store(bytesPerSecond) }

// SetDown(true) takes the registry and realm listeners down: their listening
// sockets are closed (new connections are refused with ECONNREFUSED) and
// every open connection to them is closed. SetDown(false) listens again on
// the same ports. The object store stays up, so redirects already handed out
// keep working. An error means the port could not be bound again.
func (f *Faults) SetDown(down bool) error {
	f.downMu.Lock()
	defer f.downMu.Unlock()
	if down == f.down {
		return nil
	}
	if down {
		f.u.registry.stop()
		f.u.realm.stop()
		f.down = true
		return nil
	}
	if err := f.u.registry.start(); err != nil {
		return err
	}
	if err := f.u.realm.start(); err != nil {
		return err
	}
	f.down = false
	return nil
}

// HangRegistry(true) makes the registry listener take every request and
// never answer it, as a server whose process is stuck does: the request is
// counted, then held until the client gives up (its connection is then
// closed without an answer) or HangRegistry(false) releases it the same
// way. Connections are accepted, so only a client's timeout ends the wait.
func (f *Faults) HangRegistry(on bool) {
	if on {
		ch := make(chan struct{})
		if old := f.hang.Swap(&ch); old != nil {
			close(*old)
		}
		return
	}
	if old := f.hang.Swap(nil); old != nil {
		close(*old)
	}
}

// hung holds a registry request while HangRegistry is on, and reports
// whether it did (the connection is then closed, unanswered).
func (f *Faults) hung(w http.ResponseWriter, r *http.Request) bool {
	ch := f.hang.Load()
	if ch == nil {
		return false
	}
	select {
	case <-*ch:
	case <-r.Context().Done():
	}
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		_ = conn.Close()
		return true
	}
	panic(http.ErrAbortHandler)
}

// Reset turns every fault off, brings listeners back up and releases any hold.
func (f *Faults) Reset() error {
	f.CutBlobsAfter(-1)
	f.ChunkBlobs(false)
	f.CutListsAfter(-1)
	f.ChunkLists(false)
	f.CorruptBlobs(false)
	f.SetRegistryStatus(0)
	f.SetObjectStoreStatus(0)
	f.RedirectBlobsTo("")
	f.RateLimit(false, 60*time.Second)
	f.SlowBlobs(0)
	f.HangRegistry(false)
	if h := f.hold.Load(); h != nil {
		h.Release()
	}
	return f.SetDown(false)
}

// Hold is a pause point in blob bodies, created by Faults.HoldBlobs.
type Hold struct {
	f           *Faults
	after       int64
	reached     chan struct{}
	reachedOnce sync.Once
	release     chan struct{}
	releaseOnce sync.Once
	paused      atomic.Int64
}

// HoldBlobs makes every blob body served by the object store stop after
// `after` bytes (flushed to the client) and wait until the returned Hold is
// released (or the client goes away). It replaces any previous hold, which
// is released. This makes join-halfway tests deterministic: start a pull,
// wait for Reached, start the other clients, then Release.
func (f *Faults) HoldBlobs(after int64) *Hold {
	h := &Hold{f: f, after: after, reached: make(chan struct{}), release: make(chan struct{})}
	f.liveHolds.Store(h, struct{}{})
	if old := f.hold.Swap(h); old != nil {
		old.Release()
	}
	return h
}

// Reached is closed when the first body has paused at the hold point.
func (h *Hold) Reached() <-chan struct{} { return h.reached }

// Paused is the number of bodies waiting at the hold point now.
func (h *Hold) Paused() int64 { return h.paused.Load() }

// Release lets every paused body continue and stops holding new ones.
// Calling it more than once is fine.
func (h *Hold) Release() {
	h.releaseOnce.Do(func() {
		h.f.hold.CompareAndSwap(h, nil)
		close(h.release)
		h.f.liveHolds.Delete(h)
	})
}

func (f *Faults) releaseAll() {
	f.HangRegistry(false)
	f.liveHolds.Range(func(k, _ any) bool {
		k.(*Hold).Release()
		return true
	})
}
