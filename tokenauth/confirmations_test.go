package tokenauth

import (
	"strconv"
	"testing"
	"time"
)

func TestConfirmationsExpireAndAreSwept(t *testing.T) {
	c := NewConfirmations(time.Hour)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c.Confirm("a", start)
	if !c.Within("a", time.Minute, start.Add(30*time.Second)) {
		t.Error("a confirmation is not within its window")
	}
	if c.Within("a", time.Minute, start.Add(2*time.Minute)) || c.Within("b", time.Hour, start) {
		t.Error("a confirmation outside its window, or never made, counts")
	}
	if c.Within("a", 48*time.Hour, start.Add(2*time.Hour)) {
		t.Error("a confirmation older than the retention counts")
	}

	// Past the sweep size, expired confirmations go; fresh ones stay,
	// and the next sweep waits until the map has doubled.
	for i := range pruneAt {
		c.Confirm("old"+strconv.Itoa(i), start)
	}
	later := start.Add(2 * time.Hour)
	for i := range pruneAt {
		c.Confirm("new"+strconv.Itoa(i), later)
	}
	if n := len(c.at); n != pruneAt {
		t.Errorf("%d confirmations kept, want the %d fresh ones", n, pruneAt)
	}
	if c.sweepAt <= len(c.at) {
		t.Errorf("next sweep at %d with %d confirmations: every Confirm would scan them all", c.sweepAt, len(c.at))
	}
}
