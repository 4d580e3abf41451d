package blobcache

import (
	"context"
	"errors"
	"syscall"
	"time"
)

// health is what the store knows of something that can fail it: its disk,
// or the shared tier. After a failure it is not asked for a while
// (Options.RetryAfter), so requests do not each pay for a disk or a remote
// that just failed; and a lasting condition is logged once, again only if
// it changes or the thing worked in between. It has no lock of its own:
// whoever holds it guards it.
type health struct {
	until time.Time // while now < until, it is not asked
	down  bool      // a condition was logged and nothing worked since
	cause string    // the condition last logged
}

// backOff leaves it alone for d from now.
func (h *health) backOff(d time.Duration) { h.until = time.Now().Add(d) }

// resting reports whether it is being left alone after a failure.
func (h *health) resting() bool { return time.Now().Before(h.until) }

// failing records the condition named cause and reports whether it is
// news, to be logged: the first since it last worked, or a different one.
func (h *health) failing(cause string) (news bool) {
	news = !h.down || cause != h.cause
	h.down, h.cause = true, cause
	return news
}

// worked records that it worked and reports whether that is news, to be
// logged: it was failing until now.
func (h *health) worked() (recovered bool) {
	recovered = h.down
	h.down = false
	return recovered
}

// causeOf names the condition of a failure without what changes from one
// call to the next (temp file names, object names, addresses), so that a
// lasting condition is recognised as the same one.
func causeOf(err error) string {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return err.Error()
}
