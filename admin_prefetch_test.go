package dockerproxy

// PrefetchNow starts the next run of every live prefetch schedule now, as
// if its interval had passed (a run in progress finishes first).
func PrefetchNow() {
	for _, h := range live.all() {
		if h.prefetch == nil {
			continue
		}
		select {
		case h.prefetch.wake <- struct{}{}:
		default:
		}
	}
}
