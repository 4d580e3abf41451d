package dockerproxy

import (
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// skipped is how far AdvanceClock has moved the caches' clock past the
// real time.
var skipped atomic.Int64

func init() {
	clock = func() time.Time { return time.Now().Add(time.Duration(skipped.Load())) }
}

// AdvanceClock moves the clock of every registry cache (tag_ttl, access
// confirmations) and upstream client (pauses, outages) forward by d: a tag
// goes stale, or a pause ends, without the test waiting.
// The clock only ever moves forward, so tests that run later see it moved
// too, as if they had run that much later.
func AdvanceClock(d time.Duration) { skipped.Add(int64(d)) }

// PrefetchImagesCount reads the process's count of prefetched images of
// upstream with result, as /metrics reports it: tests take it before
// their proxy starts, since the counts live as long as the process.
func PrefetchImagesCount(upstream, result string) float64 {
	var m dto.Metric
	if err := procMetrics.prefetchImages.WithLabelValues(upstream, result).Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
