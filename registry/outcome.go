package registry

import (
	"net/http"
	"strconv"
)

// Outcome is what the proxy did for one response: served it from the
// cache, fetched it, or why it could do neither. It is decided where the
// request path makes the decision (setOutcome); the Cache-Status header
// and the handler's metric are both derived from it, never the one from
// the other.
type Outcome uint8

const (
	// OutcomeNone: not a request for content (routes, tokens, /v2/, a
	// request refused before the cache was asked).
	OutcomeNone Outcome = iota
	// OutcomeHit: served from the cache.
	OutcomeHit
	// OutcomeMiss: fetched from the upstream, and cached.
	OutcomeMiss
	// OutcomeShared: fetched from the shared tier (another instance's
	// upload) instead of the upstream, and cached.
	OutcomeShared
	// OutcomeJoined: served from another request's fill in progress.
	OutcomeJoined
	// OutcomeRevalidated: a tag past its tag_ttl, confirmed unchanged by
	// the upstream.
	OutcomeRevalidated
	// OutcomeStale: the upstream failed, the last known answer was served
	// (stale-if-error).
	OutcomeStale
	// OutcomeBypass: the cache is off.
	OutcomeBypass
	// OutcomeCacheUnavailable: the cache could not store the content
	// (disk full, unwritable); it was passed through.
	OutcomeCacheUnavailable
	// OutcomeSchema1NotStored: a schema 1 signed manifest, fetched for
	// this request and never stored (see schema1.go).
	OutcomeSchema1NotStored
	// OutcomeRefused: the upstream refused this client (401, 403, 404),
	// whether or not the cache holds the content.
	OutcomeRefused
	// OutcomeUpstreamError: the upstream failed (no answer, 429, 5xx, a
	// manifest that is not what it says) and the cache had nothing to
	// serve instead.
	OutcomeUpstreamError

	numOutcomes
)

// Outcomes lists every outcome, for counters resolved ahead of requests.
func Outcomes() []Outcome {
	all := make([]Outcome, numOutcomes)
	for i := range all {
		all[i] = Outcome(i)
	}
	return all
}

// Label is the outcome as the handler's metric counts it. Outcomes that an
// operator reads the same way share a label: content passed through
// because the cache is off or cannot store it is a bypass; a schema 1
// manifest is a miss that is not kept.
func (o Outcome) Label() string {
	switch o {
	case OutcomeHit:
		return "hit"
	case OutcomeMiss, OutcomeSchema1NotStored:
		return "miss"
	case OutcomeShared:
		return "shared"
	case OutcomeJoined:
		return "joined"
	case OutcomeRevalidated:
		return "revalidated"
	case OutcomeStale:
		return "stale"
	case OutcomeBypass, OutcomeCacheUnavailable:
		return "bypass"
	case OutcomeRefused:
		return "refused"
	case OutcomeUpstreamError:
		return "error"
	}
	return "none"
}

// Result is a response's outcome with the upstream's status code where
// Cache-Status reports it (fwd-status), and what the request was for, as
// far as it was understood: the handler's metrics and access log fields
// are derived from it.
type Result struct {
	Outcome Outcome
	// UpstreamStatus is the upstream's status code behind a refusal, a
	// stale answer or an upstream error; 0 when it did not answer.
	UpstreamStatus int
	// Remembered: a refusal (a tag's 404) answered from what the upstream
	// said within negative_ttl, without asking it again.
	Remembered bool
	// Upstream is the name of the upstream the request was routed to
	// (docker.io, ghcr.io, host:port); "" when it was routed nowhere.
	Upstream string
	// Kind is what the request asked for; 0 when its path was not
	// understood.
	Kind Kind
	// Repository is the repository named in the path, as the client
	// named it; "" when the path names none.
	Repository string
}

// CacheStatus is the Cache-Status header (RFC 9211) of a response with
// this result; "" for OutcomeNone, which has none.
func (res Result) CacheStatus() string {
	switch res.Outcome {
	case OutcomeHit:
		return "docker_proxy; hit"
	case OutcomeMiss:
		return "docker_proxy; fwd=miss"
	case OutcomeShared:
		return "docker_proxy; fwd=miss; detail=shared"
	case OutcomeJoined:
		return "docker_proxy; fwd=miss; collapsed"
	case OutcomeRevalidated:
		return "docker_proxy; fwd=stale; fwd-status=200"
	case OutcomeStale:
		return "docker_proxy; fwd=stale" + res.fwdStatus() + "; detail=stale-if-error"
	case OutcomeBypass:
		return "docker_proxy; fwd=bypass"
	case OutcomeCacheUnavailable:
		return "docker_proxy; fwd=bypass; detail=cache-unavailable"
	case OutcomeSchema1NotStored:
		return "docker_proxy; fwd=miss; detail=schema1-not-stored"
	case OutcomeRefused:
		if res.Remembered {
			return "docker_proxy; hit; detail=negative"
		}
		return "docker_proxy; fwd=miss" + res.fwdStatus()
	case OutcomeUpstreamError:
		if res.UpstreamStatus == 0 {
			return "docker_proxy; fwd=miss; detail=upstream-unavailable"
		}
		return "docker_proxy; fwd=miss" + res.fwdStatus()
	}
	return ""
}

func (res Result) fwdStatus() string {
	if res.UpstreamStatus == 0 {
		return ""
	}
	return "; fwd-status=" + strconv.Itoa(res.UpstreamStatus)
}

// The results that carry no upstream status, by name.
var (
	resultHit              = Result{Outcome: OutcomeHit}
	resultMiss             = Result{Outcome: OutcomeMiss}
	resultShared           = Result{Outcome: OutcomeShared}
	resultJoined           = Result{Outcome: OutcomeJoined}
	resultRevalidated      = Result{Outcome: OutcomeRevalidated}
	resultBypass           = Result{Outcome: OutcomeBypass}
	resultCacheUnavailable = Result{Outcome: OutcomeCacheUnavailable}
	resultSchema1          = Result{Outcome: OutcomeSchema1NotStored}
)

// resultStale: the last known answer, served because the upstream failed
// with upstreamStatus (0: no answer).
func resultStale(upstreamStatus int) Result {
	return Result{Outcome: OutcomeStale, UpstreamStatus: upstreamStatus}
}

// setOutcome records the outcome of the response being written to w: its
// Cache-Status, and what Serve reports. The last decision before the
// response goes out is the one that holds.
func setOutcome(w http.ResponseWriter, t target, res Result) {
	if t.outcome != nil {
		t.outcome.Outcome, t.outcome.UpstreamStatus = res.Outcome, res.UpstreamStatus
	}
	if s := res.CacheStatus(); s != "" {
		w.Header().Set("Cache-Status", s)
	} else {
		w.Header().Del("Cache-Status")
	}
}
