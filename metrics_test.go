package dockerproxy

import "testing"

func TestCacheOutcome(t *testing.T) {
	for status, want := range map[string]string{
		"":                                        "none",
		"docker_proxy; hit":                       "hit",
		"docker_proxy; fwd=miss":                  "miss",
		"docker_proxy; fwd=miss; detail=shared":   "shared",
		"docker_proxy; fwd=miss; collapsed":       "joined",
		"docker_proxy; fwd=stale; fwd-status=200": "revalidated",
		"docker_proxy; fwd=stale; fwd-status=503; detail=stale-if-error": "stale",
		"docker_proxy; fwd=bypass; detail=cache-unavailable":             "bypass",
	} {
		if got := cacheOutcome(status); got != want {
			t.Errorf("cacheOutcome(%q) = %s, want %s", status, got, want)
		}
	}
}
