package registry

import (
	"net/http"
	"testing"
	"time"
)

func TestParseRateLimit(t *testing.T) {
	for _, tc := range []struct {
		limit, remaining string
		want             RateLimit
		ok               bool
	}{
		{"100;w=21600", "76;w=21600", RateLimit{Limit: 100, Remaining: 76, Window: 6 * time.Hour}, true},
		{"10;w=3600", "0;w=3600", RateLimit{Limit: 10, Remaining: 0, Window: time.Hour}, true},
		{"200", "5", RateLimit{Limit: 200, Remaining: 5}, true},
		{"100; w=60; comment=x", "1;w=60", RateLimit{Limit: 100, Remaining: 1, Window: time.Minute}, true},
		{"", "76;w=21600", RateLimit{}, false},
		{"100;w=21600", "", RateLimit{}, false},
		{"lots", "76", RateLimit{}, false},
		{"100", "-1", RateLimit{}, false},
		{"100;w=0", "1", RateLimit{}, false},
		{"100;w=abc", "1", RateLimit{}, false},
		{"10", "11", RateLimit{}, false},
	} {
		h := http.Header{}
		if tc.limit != "" {
			h.Set("RateLimit-Limit", tc.limit)
		}
		if tc.remaining != "" {
			h.Set("RateLimit-Remaining", tc.remaining)
		}
		got, ok := ParseRateLimit(h)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseRateLimit(%q, %q) = %+v, %v; want %+v, %v", tc.limit, tc.remaining, got, ok, tc.want, tc.ok)
		}
	}
}
