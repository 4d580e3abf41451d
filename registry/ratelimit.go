package registry

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RateLimit is an upstream's pull quota as the upstream reports it. Docker
// Hub sends it on manifest GET and HEAD responses:
//
//	ratelimit-limit: 100;w=21600
//	ratelimit-remaining: 76;w=21600
//
// that is, 100 pulls per 21,600 s window, 76 of them left. Other
// registries send nothing.
type RateLimit struct {
	Limit     int
	Remaining int
	// Window is the quota's window (w=); 0 when the upstream gave none.
	Window time.Duration
}

// ParseRateLimit reads the quota headers of an upstream response. ok is
// false when either header is missing or malformed: a quota is reported
// whole or not at all.
func ParseRateLimit(h http.Header) (rl RateLimit, ok bool) {
	limit, window, ok := parseQuotaHeader(h.Get("Ratelimit-Limit"))
	if !ok {
		return RateLimit{}, false
	}
	remaining, remainingWindow, ok := parseQuotaHeader(h.Get("Ratelimit-Remaining"))
	if !ok || remaining > limit {
		return RateLimit{}, false
	}
	if window == 0 {
		window = remainingWindow
	}
	return RateLimit{Limit: limit, Remaining: remaining, Window: window}, true
}

// parseQuotaHeader parses "<count>[;w=<seconds>]", with any other
// parameters ignored.
func parseQuotaHeader(v string) (count int, window time.Duration, ok bool) {
	if v == "" {
		return 0, 0, false
	}
	head, params, _ := strings.Cut(v, ";")
	count, err := strconv.Atoi(strings.TrimSpace(head))
	if err != nil || count < 0 {
		return 0, 0, false
	}
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		name, val, _ := strings.Cut(strings.TrimSpace(p), "=")
		if strings.EqualFold(name, "w") {
			secs, err := strconv.Atoi(val)
			if err != nil || secs <= 0 {
				return 0, 0, false
			}
			window = time.Duration(secs) * time.Second
		}
	}
	return count, window, true
}
