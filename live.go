package dockerproxy

import "sync"

// live holds the handlers provisioned and not yet cleaned up, for what
// serves outside a site's requests: the admin API, which Caddy provisions
// before the apps, and so must find the handlers and their stores at
// request time. While a config reloads, the old and the new config's
// handlers are both here, the newest last.
var live liveSet

type liveSet struct {
	mu       sync.Mutex
	handlers []*Handler
}

func (s *liveSet) add(h *Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers = append(s.handlers, h)
}

func (s *liveSet) remove(h *Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.handlers {
		if x == h {
			s.handlers = append(s.handlers[:i:i], s.handlers[i+1:]...)
			return
		}
	}
}

// all returns the live handlers, oldest first.
func (s *liveSet) all() []*Handler {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Handler(nil), s.handlers...)
}
