package tokenauth

import (
	"sync"
	"time"
)

// Confirmations remembers when the upstream last confirmed something:
// that it accepted a client's credentials, or a client's access to some
// content. It lets the proxy keep serving what the upstream confirmed while
// the upstream cannot be asked, and nothing it never confirmed. Entries
// older than the retention are dropped when the map grows. Safe for
// concurrent use; share one across config reloads.
type Confirmations struct {
	retention time.Duration

	mu sync.Mutex
	at map[string]time.Time
	// sweepAt is the size at which expired confirmations are swept next:
	// twice what a sweep left, so that a map of fresh ones is not
	// scanned on every Confirm.
	sweepAt int
}

// NewConfirmations keeps confirmations for retention.
func NewConfirmations(retention time.Duration) *Confirmations {
	return &Confirmations{retention: retention, at: map[string]time.Time{}, sweepAt: pruneAt}
}

// pruneAt is the least size at which expired confirmations are swept.
const pruneAt = 10000

// Confirm records that key was confirmed at now.
func (c *Confirmations) Confirm(key string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.at) >= c.sweepAt {
		for k, t := range c.at {
			if now.Sub(t) > c.retention {
				delete(c.at, k)
			}
		}
		c.sweepAt = max(pruneAt, 2*len(c.at))
	}
	c.at[key] = now
}

// Within reports whether key was confirmed less than window before now.
func (c *Confirmations) Within(key string, window time.Duration, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.at[key]
	return ok && now.Sub(t) < window && now.Sub(t) < c.retention
}
