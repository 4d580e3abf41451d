package registry

// Upstream state: an upstream that fails fast and is not hammered.
//
// Every request to an upstream goes through Client.Do, which asks the
// upstream's state first and tells it what came back:
//
//   - A 429 pauses the requests of that identity (the client's own
//     credentials, or the proxy's: anonymous or the configured account) to
//     that upstream until the upstream's Retry-After. Meanwhile nothing is
//     sent for that identity: Do fails at once with a pausedError, so that
//     tags are served stale and misses get 429 with Retry-After. Other
//     identities go on; their quota is their own.
//   - Docker Hub's quota at 0 (ratelimit-remaining) pauses the requests
//     that the quota counts, manifest GETs, the same way. Blobs and HEADs
//     do not count against it, so they still go: a tag is still
//     revalidated with a HEAD, and an image whose manifests are cached
//     still gets its layers.
//   - An upstream that cannot be reached (no connection, TLS failure, no
//     answer in time) is down for a short interval that doubles with every
//     failed probe (1 s up to 30 s). While it is down Do fails at once with
//     a downError, so a stale tag does not wait for the revalidation
//     timeout. Once the interval is over, one request at a time goes
//     through as the probe; any answer, whatever its status, ends the
//     outage. A 5xx is an answer: the upstream is there, it is only
//     failing, and each request still asks (and falls back to stale).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

const (
	// defaultPause is how long a 429 without a usable Retry-After pauses
	// an identity: long enough not to hammer, short enough that a
	// throttle of a few seconds costs little.
	defaultPause = 10 * time.Second
	// maxPause bounds any pause, however far the upstream's Retry-After
	// (or a clock skewed HTTP date) points.
	maxPause = time.Hour
	// firstOutage and maxOutage bound an unreachable upstream's down
	// interval, which doubles with each failed probe.
	firstOutage = time.Second
	maxOutage   = 30 * time.Second
	// prunePausesAt is the number of pauses at which the ended ones are
	// forgotten.
	prunePausesAt = 1024
)

// upstreamState is what the proxy knows of its upstreams' availability:
// the pauses by upstream and identity, the outages by upstream. The zero
// value is ready to use.
type upstreamState struct {
	mu sync.Mutex
	// paused: every request (a 429); quotaSpent: the requests the quota
	// counts (its remaining count at 0). Both by upstream "\x00" identity,
	// until when.
	paused     map[string]time.Time
	quotaSpent map[string]time.Time
	down       map[string]*outage // upstream -> outage
}

// outage is an upstream that did not answer.
type outage struct {
	until   time.Time
	backoff time.Duration
	// probing: a request is out to find out whether it is back.
	probing bool
}

// pausedError is a request that was not sent: the upstream asked this
// identity to wait until then.
type pausedError struct {
	upstream string
	until    time.Time
	now      time.Time
}

func (e *pausedError) Error() string {
	return fmt.Sprintf("upstream %s asked to wait (429 or quota used up): paused until %s", e.upstream, e.until.UTC().Format(time.RFC3339))
}

// downError is a request that was not sent: the upstream could not be
// reached lately, and it is not yet time to try again (or another request
// is trying).
type downError struct {
	upstream string
	until    time.Time
	now      time.Time
}

func (e *downError) Error() string {
	return fmt.Sprintf("upstream %s cannot be reached: not asked again before %s", e.upstream, e.until.UTC().Format(time.RFC3339))
}

// retryAfter is the Retry-After value (whole seconds, rounded up, at least
// 1) for a wait until until.
func retryAfter(until, now time.Time) string {
	secs := int64((until.Sub(now) + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(secs, 1), 10)
}

// requestIdentity names who the upstream sees a request from, as far as
// its quota goes: "" for the proxy's own identity at that upstream (the
// Client's configured credentials, or anonymous), else a hash of the
// client's Authorization. It partitions identities as askedAs does.
func requestIdentity(grant tokenauth.Grant) string {
	if grant.Anonymous() {
		return ""
	}
	sum := sha256.Sum256([]byte(grant.Authorization))
	return hex.EncodeToString(sum[:16])
}

// admit reports whether a request of identity may go to up now; counted
// says whether the upstream's quota counts it (a manifest GET). probe is
// true when it goes as the one probe of an outage; it must then be
// followed by learn with probe set, which ends the probe.
func (s *upstreamState) admit(up Upstream, identity string, counted bool, now time.Time) (probe bool, err error) {
	key := up.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	if pe := pausedIn(s.paused, up, identity, now); pe != nil {
		return false, pe
	}
	if counted {
		if pe := pausedIn(s.quotaSpent, up, identity, now); pe != nil {
			return false, pe
		}
	}
	o := s.down[key]
	if o == nil {
		return false, nil
	}
	if o.probing || now.Before(o.until) {
		until := o.until
		if o.probing && !now.Before(until) {
			// The probe is out: the answer is at most its timeout away.
			until = now.Add(o.backoff)
		}
		return false, &downError{upstream: up.Name, until: until, now: now}
	}
	o.probing = true
	return true, nil
}

// learn records what a request of identity to up came back with at now:
// resp, or err under ctx.
func (s *upstreamState) learn(ctx context.Context, up Upstream, identity string, probe bool, now time.Time, resp *http.Response, err error, logger *zap.Logger) {
	key := up.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.down[key]
	if probe && o != nil {
		o.probing = false
	}
	if err != nil {
		if !unreachable(ctx, up, err) {
			return
		}
		switch {
		case o == nil:
			o = &outage{backoff: firstOutage, until: now.Add(firstOutage)}
			if s.down == nil {
				s.down = map[string]*outage{}
			}
			s.down[key] = o
			logger.Warn("upstream cannot be reached: requests fail at once until it answers a probe",
				zap.String("upstream", up.Name), zap.Duration("retry_in", o.backoff), zap.Error(err))
		case probe:
			o.backoff = min(2*o.backoff, maxOutage)
			o.until = now.Add(o.backoff)
			logger.Debug("upstream still cannot be reached", zap.String("upstream", up.Name), zap.Duration("retry_in", o.backoff), zap.Error(err))
		default:
			// A request that was out when the outage began.
			o.until = maxTime(o.until, now.Add(o.backoff))
		}
		return
	}
	if o != nil {
		delete(s.down, key)
		logger.Info("upstream answers again", zap.String("upstream", up.Name), zap.Int("status", resp.StatusCode))
	}
	until, all, ok := pauseUntil(resp, now)
	if !ok {
		return
	}
	pauses, msg := &s.quotaSpent, "upstream's quota is used up: manifest GETs of this identity paused"
	if all {
		pauses, msg = &s.paused, "upstream asks to wait: every request of this identity paused"
	}
	if *pauses == nil {
		*pauses = map[string]time.Time{}
	}
	m, pk := *pauses, key+"\x00"+identity
	if len(m) >= prunePausesAt {
		// Clients' own identities come and go: forget the pauses that
		// ended.
		for k, u := range m {
			if !now.Before(u) {
				delete(m, k)
			}
		}
	}
	if until.After(m[pk]) {
		if !m[pk].After(now) {
			logger.Warn(msg,
				zap.String("upstream", up.Name), zap.Int("status", resp.StatusCode), zap.Time("until", until))
		}
		m[pk] = until
	}
}

// pausedIn returns the pause of identity at up in pauses, if one runs at
// now; one that ended is forgotten.
func pausedIn(pauses map[string]time.Time, up Upstream, identity string, now time.Time) *pausedError {
	pk := up.String() + "\x00" + identity
	until, ok := pauses[pk]
	if !ok {
		return nil
	}
	if !now.Before(until) {
		delete(pauses, pk)
		return nil
	}
	return &pausedError{upstream: up.Name, until: until, now: now}
}

// pausedFor returns the pause of every request of identity at up (a 429's),
// if one is running at now.
func (s *upstreamState) pausedFor(up Upstream, identity string, now time.Time) *pausedError {
	s.mu.Lock()
	defer s.mu.Unlock()
	return pausedIn(s.paused, up, identity, now)
}

// quotaSpentFor reports whether identity's quota at up was used up at
// now: its manifest GETs are paused.
func (s *upstreamState) quotaSpentFor(up Upstream, identity string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return pausedIn(s.quotaSpent, up, identity, now) != nil
}

// pauseUntil says whether an upstream answer asks its identity to wait,
// until when, and whether for every request (all) or only those its quota
// counts: a 429, every request until its Retry-After (defaultPause without
// one); a quota at 0 (Docker Hub's ratelimit-remaining), the counted ones
// until its Retry-After if it sends one, else until one pull of the window
// is likely to be free again (window/limit: Docker Hub's windows roll) but
// at least defaultPause. Never longer than maxPause.
func pauseUntil(resp *http.Response, now time.Time) (until time.Time, all, ok bool) {
	after, hasAfter := parseRetryAfter(resp.Header.Get("Retry-After"), now)
	var wait time.Duration
	switch rl, quota := ParseRateLimit(resp.Header); {
	case resp.StatusCode == http.StatusTooManyRequests:
		all = true
		wait = defaultPause
		if hasAfter {
			wait = after
		}
	case quota && rl.Remaining == 0:
		wait = defaultPause
		switch {
		case hasAfter:
			wait = after
		case rl.Window > 0 && rl.Limit > 0:
			wait = max(rl.Window/time.Duration(rl.Limit), defaultPause)
		}
	default:
		return time.Time{}, false, false
	}
	if wait <= 0 {
		return time.Time{}, false, false
	}
	return now.Add(min(wait, maxPause)), all, true
}

// parseRetryAfter reads Retry-After (RFC 9110, 10.2.3): delay-seconds or
// an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(min(secs, int64(maxPause/time.Second))) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return t.Sub(now), true
}

// unreachable reports whether err, of a request to up under ctx, says that
// up could not be reached: the request to up's own host failed below HTTP
// (no connection, TLS, reset, no answer) or got no answer in time. A
// client that left, a refused redirect or a failing redirect target (a
// CDN) say nothing of the upstream.
func unreachable(ctx context.Context, up Upstream, err error) bool {
	if ctx.Err() != nil {
		// Canceled: by the request's own deadline (no answer in time),
		// or because nobody waits for the answer any more.
		return errors.Is(context.Cause(ctx), context.DeadlineExceeded)
	}
	var ue *url.Error
	if !errors.As(err, &ue) {
		return false
	}
	u, perr := url.Parse(ue.URL)
	return perr == nil && u.Host == up.URL.Host
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// failFast is the registry error for a request that was not sent because
// of the upstream's state, with its Retry-After; ok is false for any other
// error.
func failFast(up Upstream, err error) (e *Error, retry string, ok bool) {
	name := "the upstream registry"
	if _, public := wellKnown[up.Name]; public {
		name = "upstream registry " + up.Name
	}
	var pe *pausedError
	var de *downError
	switch {
	case errors.As(err, &pe):
		retry = retryAfter(pe.until, pe.now)
		return &Error{Status: http.StatusTooManyRequests, Code: CodeTooManyRequests,
			Message: name + " asked the proxy to wait (rate limit): retry after " + retry + " s"}, retry, true
	case errors.As(err, &de):
		retry = retryAfter(de.until, de.now)
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: name + " is unavailable: it cannot be reached; the proxy tries again in " + retry + " s"}, retry, true
	}
	return nil, "", false
}
