package blobcache

// Disk health: after a disk error the store answers ErrUnavailable for
// Options.RetryAfter instead of touching the disk, and logs the condition once.

import (
	"fmt"

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
	if s.disk.resting() {
		return fmt.Errorf("%w: recent disk error: %s", ErrUnavailable, s.disk.cause)
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
	s.disk.backOff(s.opts.RetryAfter)
	s.logDiskConditionLocked(causeOf(err), err)
}

// logDiskConditionLocked logs a disk condition (named by cause) once: again
// only if it changes or the disk worked in between.
func (s *Store) logDiskConditionLocked(cause string, err error) {
	if s.disk.failing(cause) {
		s.log.Warn("blob cache disk error; requests pass through while it lasts",
			zap.String("dir", s.opts.Dir), zap.Error(err), zap.Duration("retry_after", s.opts.RetryAfter))
	}
}
