package blobcache

// Disk health: after a disk error the store answers ErrUnavailable for
// Options.RetryAfter instead of touching the disk, and logs the condition once.

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// checkAvailable fails fast while a recent disk error lasts, so callers go
// pass-through instead of hitting a full or broken disk on every request.
func (s *Store) checkAvailable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("%w: %w", ErrUnavailable, ErrClosed)
	}
	if time.Now().Before(s.unavailUntil) {
		return fmt.Errorf("%w: recent disk error: %s", ErrUnavailable, s.diskCause)
	}
	return nil
}

func (s *Store) diskError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.diskErrorLocked(err)
}

// diskErrorLocked opens the fail-fast window and logs the condition once:
// again only if it changes or the disk worked in between.
func (s *Store) diskErrorLocked(err error) {
	s.unavailUntil = time.Now().Add(s.opts.RetryAfter)
	cause := err.Error()
	var errno syscall.Errno
	if errors.As(err, &errno) {
		cause = errno.Error() // drop the (random temp) path from the key
	}
	s.logDiskConditionLocked(cause, err)
}

// logDiskConditionLocked logs a disk condition (named by cause) once: again
// only if it changes or the disk worked in between.
func (s *Store) logDiskConditionLocked(cause string, err error) {
	if !s.diskDown || cause != s.diskCause {
		s.log.Warn("blob cache disk error; requests pass through while it lasts",
			zap.String("dir", s.opts.Dir), zap.Error(err), zap.Duration("retry_after", s.opts.RetryAfter))
	}
	s.diskDown = true
	s.diskCause = cause
}
