package blobcache

// Uploads to the shared tier: a bounded queue and a few workers, so that
// a request never waits for the remote.

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
)

const (
	// uploadWorkers upload entries in parallel; uploadQueue bounds what
	// waits for them.
	uploadWorkers = 2
	uploadQueue   = 1024
	// uploadRate is the slowest upload rate tolerated: an upload gets a
	// minute plus the time to send its size at this rate, then is given
	// up, so that a stalled connection does not hold a worker forever.
	uploadRate = 1 << 20
	// closeGrace is how long Close lets running uploads finish.
	closeGrace = 5 * time.Second
)

// uploadJob is an entry (digest) or a tag record (tagKey) to upload.
type uploadJob struct {
	digest digest.Digest
	tagKey string
	tag    Tag
}

// uploads is the queue of work for the remote and its workers.
type uploads struct {
	jobs   chan uploadJob
	quit   chan struct{} // closed by Close: workers take no new job
	ctx    context.Context
	cancel context.CancelFunc // ends running uploads, closeGrace after quit
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	pending int           // queued or running
	idle    chan struct{} // closed when pending drops to 0
}

func (s *Store) startUploads() {
	ctx, cancel := context.WithCancel(context.Background())
	u := &uploads{jobs: make(chan uploadJob, uploadQueue), quit: make(chan struct{}), ctx: ctx, cancel: cancel}
	s.uploads = u
	for range uploadWorkers {
		u.wg.Add(1)
		go s.uploadWorker()
	}
}

// queueUpload hands a job to the workers without ever waiting: with no
// usable remote, or a full queue, the job is dropped.
func (s *Store) queueUpload(j uploadJob) {
	if s.usableRemote() == nil {
		return
	}
	u := s.uploads
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return
	}
	select {
	case u.jobs <- j:
		if u.pending == 0 {
			u.idle = make(chan struct{})
		}
		u.pending++
	default:
		s.log.Debug("shared tier upload queue full; not uploaded",
			zap.String("digest", j.digest.String()), zap.Bool("tag", j.tagKey != ""))
	}
}

func (s *Store) uploadWorker() {
	u := s.uploads
	defer u.wg.Done()
	for {
		select {
		case <-u.quit:
			return
		default:
		}
		select {
		case <-u.quit:
			return
		case j := <-u.jobs:
			if j.tagKey != "" {
				s.uploadTag(u.ctx, j.tagKey, j.tag)
			} else {
				s.uploadEntry(u.ctx, j.digest)
			}
			u.done()
		}
	}
}

func (u *uploads) done() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pending--
	if u.pending == 0 {
		close(u.idle)
	}
}

// uploadEntry copies a committed entry to the remote, unless the remote
// has it (and its copy is not known to be wrong) or the entry is gone.
// The entry stays pinned while it is read.
func (s *Store) uploadEntry(ctx context.Context, d digest.Digest) {
	r := s.usableRemote()
	if r == nil {
		return
	}
	if !s.remoteCopyIsBad(d) {
		hctx, cancel := context.WithTimeout(ctx, remoteTimeout)
		has, err := r.Has(hctx, d)
		cancel()
		if err != nil {
			s.remoteFailed("check", err)
			return
		}
		s.remoteWorked()
		if has {
			return
		}
	}
	b, err := s.open(d, false)
	if err != nil {
		return // evicted meanwhile
	}
	defer b.Close()
	pctx, cancel := context.WithTimeout(ctx, time.Minute+time.Duration(b.Size/uploadRate)*time.Second)
	defer cancel()
	if err := r.Put(pctx, b.Info, s.scopesOf(d), io.NewSectionReader(b.File, 0, b.Size)); err != nil {
		s.remoteFailed("upload", err)
		return
	}
	s.remoteWorked()
	s.remoteCopyReplaced(d)
}

func (s *Store) uploadTag(ctx context.Context, key string, t Tag) {
	r := s.usableRemote()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	if err := r.SetTag(ctx, key, t); err != nil {
		s.remoteFailed("write tag", err)
		return
	}
	s.remoteWorked()
}

// WaitUploads waits until every upload queued so far has ended (done,
// failed or dropped), or ctx is done; first, fills that are being
// committed (their clients may have every byte already) commit and queue
// theirs. For tests and orderly shutdowns.
func (s *Store) WaitUploads(ctx context.Context) error {
	s.mu.Lock()
	var finishing []*Fill
	for _, f := range s.fills {
		if f.isFinishing() {
			finishing = append(finishing, f)
		}
	}
	s.mu.Unlock()
	for _, f := range finishing {
		select {
		case <-f.ended:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	u := s.uploads
	u.mu.Lock()
	if u.pending == 0 {
		u.mu.Unlock()
		return nil
	}
	idle := u.idle
	u.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stopUploads lets running uploads finish for closeGrace, then cancels
// them, drops the queued ones and waits for the workers.
func (s *Store) stopUploads() {
	u := s.uploads
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return
	}
	u.closed = true
	close(u.quit)
	u.mu.Unlock()
	grace := time.AfterFunc(closeGrace, u.cancel)
	u.wg.Wait()
	grace.Stop()
	u.cancel()
	u.mu.Lock()
	defer u.mu.Unlock()
	for {
		select {
		case <-u.jobs:
			u.pending--
			if u.pending == 0 {
				close(u.idle)
			}
		default:
			return
		}
	}
}
