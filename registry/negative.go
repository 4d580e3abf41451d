package registry

// Negative answers: a tag the upstream said it does not have (404) may be
// remembered for Cache.NegativeTTL, per identity, and answered without
// asking again. Clients and CI jobs that ask for a missing tag in a loop
// then cost the upstream one request per NegativeTTL; a tag pushed in the
// meantime appears once it ends.

import (
	"net/http"
	"sync"
	"time"
)

// maxNegativeTags bounds the remembered 404s: beyond it, the expired ones
// go, and if none has, a new one is not remembered (it is asked again).
const maxNegativeTags = 10000

// negativeTags holds the remembered 404s by tag record key and identity.
type negativeTags struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func (n *negativeTags) remember(key string, until, now time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.until == nil {
		n.until = map[string]time.Time{}
	}
	if len(n.until) >= maxNegativeTags {
		for k, u := range n.until {
			if !now.Before(u) {
				delete(n.until, k)
			}
		}
		if len(n.until) >= maxNegativeTags {
			return
		}
	}
	n.until[key] = until
}

func (n *negativeTags) known(key string, now time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	until, ok := n.until[key]
	if ok && !now.Before(until) {
		delete(n.until, key)
		return false
	}
	return ok
}

// negativeKey names c's tag (with its Accept set, on which the answer may
// depend) as c's identity asks for it.
func (c *pull) negativeKey(tagKey string) string { return tagKey + "\x00" + c.askedAs() }

// rememberMissing remembers the upstream's 404 for c's tag if negative
// answers are on.
func (c *pull) rememberMissing(tagKey string) {
	cache := c.p.Cache
	if cache.NegativeTTL <= 0 {
		return
	}
	now := cache.now()
	cache.negatives.remember(c.negativeKey(tagKey), now.Add(cache.NegativeTTL), now)
}

// serveRememberedMissing answers with the upstream's 404 for c's tag if it
// is remembered for c's identity.
func (c *pull) serveRememberedMissing(tagKey string) (answered bool) {
	cache := c.p.Cache
	if cache.NegativeTTL <= 0 || !cache.negatives.known(c.negativeKey(tagKey), cache.now()) {
		return false
	}
	setOutcome(c.w, c.t, Result{Outcome: OutcomeRefused, UpstreamStatus: http.StatusNotFound, Remembered: true})
	WriteError(c.w, &Error{Status: http.StatusNotFound, Code: CodeManifestUnknown, Message: c.path.Reference() + " is not in " + c.path.Name})
	return true
}
