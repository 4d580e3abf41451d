package blobcache

// The shared tier. Several instances behind one load balancer each have
// their local store, which serves every request (fan-out, verification,
// sendfile), and share one Remote behind it:
//
//   - what a store commits from an upstream (a fill, a Put) is uploaded in
//     the background, by a few workers fed by a bounded queue: a full queue
//     drops the job, a request never waits for the remote;
//   - a fill may take its bytes from the remote instead of the upstream
//     (Fill.StartRemote, LoadRemote); they are verified as any fill's, and
//     a copy that does not match its digest is not read again for a while:
//     the upload of the upstream's bytes that follows replaces it;
//   - tag records set in the store are written to the remote too, and
//     RemoteTag reads them, so that a tag one instance checked serves the
//     others until it goes stale.
//
// A remote that fails is logged once per condition and skipped for
// Options.RetryAfter; requests then go on from the local store and the
// upstream as if there were none.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
)

// Remote is the shared tier behind the local store, such as an S3 bucket.
// Implementations must be safe for concurrent use. The context of each
// call governs the whole call, the body of an opened entry included.
type Remote interface {
	// Open returns d's body with what was stored with it. The error wraps
	// ErrNotFound when the remote has no d.
	Open(ctx context.Context, d digest.Digest) (*RemoteEntry, error)
	// Has reports whether the remote holds d.
	Has(ctx context.Context, d digest.Digest) (bool, error)
	// Put stores a committed entry: body yields exactly info.Size bytes,
	// which hash to info.Digest. It replaces any copy the remote has.
	Put(ctx context.Context, info Info, scopes []string, body io.Reader) error
	// Tag returns the record of an opaque tag key. The error wraps
	// ErrNotFound when there is none.
	Tag(ctx context.Context, key string) (Tag, error)
	// SetTag stores the record of key, replacing any previous one.
	SetTag(ctx context.Context, key string, t Tag) error
}

// RemoteEntry is an entry opened on a Remote. Nothing in it is verified:
// Size and the bytes of Body are what the remote holds, which a fill
// checks against the digest before anything is kept or ends cleanly.
type RemoteEntry struct {
	Info
	// Scopes may read the entry, as recorded by the store that uploaded
	// it (see Store.Allow). A scope missing here only costs an access
	// check with the upstream; it never widens access.
	Scopes []string
	Body   io.ReadCloser
}

const (
	// remoteTimeout bounds the wait for the remote's answer on a
	// request's path (opening an entry, reading a tag record or a small
	// entry) and for its small background calls: a remote that is slow
	// costs the request a few seconds, then the upstream answers it.
	remoteTimeout = 5 * time.Second
	// badCopyTTL is how long a wrong remote copy is ignored.
	badCopyTTL = 10 * time.Minute
)

// remoteState is the store's remote and its health.
type remoteState struct {
	mu     sync.Mutex
	r      Remote
	health health
	// bad holds the digests whose remote copy did not match, and when:
	// for badCopyTTL they are not read from the remote again (another
	// instance may replace the copy meanwhile), and uploading them
	// replaces the copy even though the remote has one.
	bad map[digest.Digest]time.Time
}

// SetRemote changes the remote (nil: none), as a config reload asks.
// Uploads queued for the previous one go to the new one.
func (s *Store) SetRemote(r Remote) {
	s.remote.mu.Lock()
	defer s.remote.mu.Unlock()
	s.remote.r = r
	s.remote.health = health{}
	s.remote.bad = nil
}

// usableRemote returns the remote unless there is none or it failed within
// the last Options.RetryAfter.
func (s *Store) usableRemote() Remote {
	s.remote.mu.Lock()
	defer s.remote.mu.Unlock()
	if s.remote.r == nil || s.remote.health.resting() {
		return nil
	}
	return s.remote.r
}

// remoteWorked records an answer from the remote (a "not found" counts).
func (s *Store) remoteWorked() {
	s.remote.mu.Lock()
	defer s.remote.mu.Unlock()
	if s.remote.health.worked() {
		s.log.Info("shared tier reachable again")
	}
}

// remoteFailed skips the remote for Options.RetryAfter and logs the
// condition once: again only if it changes or the remote worked between.
// A call canceled by its caller (a client that left, Close) is no failure
// of the remote.
func (s *Store) remoteFailed(op string, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	s.counters.sharedTierErrors.Add(1)
	s.remote.mu.Lock()
	defer s.remote.mu.Unlock()
	s.remote.health.backOff(s.opts.RetryAfter)
	if s.remote.health.failing(causeOf(err)) {
		s.log.Warn("shared tier unavailable; requests go on from the local cache and the upstream while it lasts",
			zap.String("operation", op), zap.Error(err), zap.Duration("retry_after", s.opts.RetryAfter))
	}
}

// remoteCopyBad records that the remote's copy of d is wrong (it did not
// hash to d, or its size was wrong).
func (s *Store) remoteCopyBad(d digest.Digest, err error) {
	s.remote.mu.Lock()
	defer s.remote.mu.Unlock()
	if s.remote.bad == nil {
		s.remote.bad = make(map[digest.Digest]time.Time)
	}
	now := time.Now()
	for bd, at := range s.remote.bad {
		if now.Sub(at) >= badCopyTTL {
			delete(s.remote.bad, bd)
		}
	}
	s.remote.bad[d] = now
	s.log.Warn("shared tier holds a wrong copy; it is ignored here for a while, and this instance's next upstream fetch of it replaces it",
		zap.String("digest", d.String()), zap.Error(err), zap.Duration("ignored_for", badCopyTTL))
}

func (s *Store) remoteCopyIsBad(d digest.Digest) bool {
	s.remote.mu.Lock()
	defer s.remote.mu.Unlock()
	at, bad := s.remote.bad[d]
	return bad && time.Since(at) < badCopyTTL
}

func (s *Store) remoteCopyReplaced(d digest.Digest) {
	s.remote.mu.Lock()
	defer s.remote.mu.Unlock()
	delete(s.remote.bad, d)
}

// openRemote opens d on the remote. ctx and remoteTimeout bound the wait
// for the answer only: the body, once there, outlives them (a fill reads
// it at its own pace, guarded by its stall timeout), and closing it ends
// the request. The error wraps ErrNotFound when the remote cannot help:
// none, failing lately, no copy, or a copy known to be wrong.
func (s *Store) openRemote(ctx context.Context, d digest.Digest) (*RemoteEntry, error) {
	r := s.usableRemote()
	if r == nil || s.remoteCopyIsBad(d) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, d)
	}
	bodyCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	timer := time.AfterFunc(remoteTimeout, cancel)
	stop := context.AfterFunc(ctx, cancel)
	e, err := r.Open(bodyCtx, d)
	timedOut, left := !timer.Stop(), !stop()
	if err == nil && (timedOut || left) {
		// The answer came, but its body's context was just canceled.
		e.Body.Close()
		err = fmt.Errorf("opening %s: %w", d, context.DeadlineExceeded)
		if left {
			err = ctx.Err()
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, ErrNotFound):
		cancel()
		s.remoteWorked()
		return nil, err
	case ctx.Err() != nil:
		cancel()
		return nil, ctx.Err()
	default:
		cancel()
		if errors.Is(err, context.Canceled) { // our timer's doing
			err = fmt.Errorf("opening %s: no answer within %v: %w", d, remoteTimeout, context.DeadlineExceeded)
		}
		s.remoteFailed("open", err)
		return nil, err
	}
	s.remoteWorked()
	e.Digest = d
	e.Body = &cancelingBody{ReadCloser: e.Body, cancel: cancel}
	return e, nil
}

// cancelingBody ends its request's context when closed.
type cancelingBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelingBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// StartRemote (leader only) starts the fill from the remote's copy of the
// digest instead of the upstream, and records the access scopes stored
// with it, as Allow does. It reports whether it did; if it did not, the
// fill is still the leader's to Start or Fail, unless err wraps
// ErrUnavailable: then the store could not take the bytes (disk full,
// unwritable, closed; as with Start) and the fill failed. The remote not
// helping (none, no copy, a copy known to be wrong, failing or slow) is no
// error: its failures are logged by the store. ctx bounds the wait for the
// remote's answer; the fill outlives it.
//
// The bytes are verified as an upstream's are: a wrong copy fails the fill
// (its readers see the error, never a clean end) and is not read again.
func (f *Fill) StartRemote(ctx context.Context) (started bool, err error) {
	s := f.s
	e, err := s.openRemote(ctx, f.d)
	if err != nil {
		return false, nil
	}
	if len(e.Scopes) > 0 {
		_ = s.Allow(f.d, e.Scopes...) // on the fill: kept if it commits
	}
	if _, err := f.start(Source{Body: e.Body, Size: e.Size, MediaType: e.MediaType}, true, nil); err != nil {
		e.Body.Close()
		return false, err
	}
	return true, nil
}

// LoadRemote copies a small entry (a manifest) of at most limit bytes from
// the remote into the store: it reads it, verifies it, commits it with the
// remote's scopes (not to be uploaded back) and returns it. Errors wrap
// ErrNotFound when the remote cannot help (as for StartRemote),
// ErrDigestMismatch for a wrong copy (not read again) or ErrUnavailable
// when the store cannot keep it. ctx and a few seconds bound the whole
// call.
func (s *Store) LoadRemote(ctx context.Context, d digest.Digest, limit int64) (Info, []byte, error) {
	if err := checkDigest(d); err != nil {
		return Info{}, nil, err
	}
	e, err := s.openRemote(ctx, d)
	if err != nil {
		return Info{}, nil, err
	}
	defer e.Body.Close()
	if e.Size > limit {
		return Info{}, nil, fmt.Errorf("%w: the remote's copy of %s has %d bytes, more than %d", ErrNotFound, d, e.Size, limit)
	}
	cut := time.AfterFunc(remoteTimeout, func() { e.Body.Close() })
	data, err := io.ReadAll(io.LimitReader(e.Body, limit+1))
	cut.Stop()
	if err != nil {
		if ctx.Err() == nil {
			s.remoteFailed("read", fmt.Errorf("reading %s: %w", d, err))
		}
		return Info{}, nil, err
	}
	if got := d.Algorithm().FromBytes(data); got != d || int64(len(data)) != e.Size {
		err := fmt.Errorf("%w: the remote's copy of %s has %d bytes (announced %d) hashing to %s", ErrDigestMismatch, d, len(data), e.Size, got)
		s.remoteCopyBad(d, err)
		return Info{}, nil, err
	}
	if err := s.put(d, e.MediaType, data, origin{scopes: e.Scopes}); err != nil {
		return Info{}, nil, err
	}
	return Info{Digest: d, Size: e.Size, MediaType: e.MediaType}, data, nil
}

// RemoteTag returns the remote's record of key, and stores it locally as
// it is (it is not written back), or false when the remote cannot help.
// ctx and a few seconds bound the call.
func (s *Store) RemoteTag(ctx context.Context, key string) (Tag, bool) {
	r := s.usableRemote()
	if r == nil {
		return Tag{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	t, err := r.Tag(ctx, key)
	if err == nil {
		if err = checkDigest(t.Digest); err == nil && t.Size < 0 {
			err = fmt.Errorf("negative size %d", t.Size)
		}
		if err != nil {
			s.log.Debug("ignoring a bad tag record of the shared tier", zap.Error(err))
			return Tag{}, false
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, ErrNotFound):
		s.remoteWorked()
		return Tag{}, false
	default:
		s.remoteFailed("read tag", err)
		return Tag{}, false
	}
	s.remoteWorked()
	if local, ok := s.Tag(key); ok && !local.Checked.Before(t.Checked) {
		return local, true // set here meanwhile, and no older
	}
	if err := s.setTag(key, t, false); err != nil {
		s.log.Debug("cannot store a tag record of the shared tier", zap.Error(err))
	}
	return t, true
}
