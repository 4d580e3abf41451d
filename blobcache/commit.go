package blobcache

// Committing verified bytes: Put for small entries, the end of a fill for
// the others; the sidecar and data renames, and the index that follows them.

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
)

// Put stores a small entry (a manifest) synchronously: it verifies that data
// hashes to d, writes it and commits it atomically. Errors wrap
// ErrDigestMismatch, ErrInvalidDigest or ErrUnavailable (disk trouble).
// Putting an entry that is already committed is a no-op (Allow adds
// scopes to it). A new entry is uploaded to the remote in the background,
// with scopes, which may read it from the start.
func (s *Store) Put(d digest.Digest, mediaType string, data []byte, scopes ...string) error {
	return s.put(d, mediaType, data, origin{upload: true, scopes: scopes})
}

// PutLocal is Put for an entry that stays with this store: it is never
// uploaded to the remote (what only this instance needs, such as the last
// answer of a list kept for when the upstream fails).
func (s *Store) PutLocal(d digest.Digest, mediaType string, data []byte) error {
	return s.put(d, mediaType, data, origin{})
}

// origin says where a committed entry's bytes came from: whether they go
// on to the remote, and the access scopes that came with them.
type origin struct {
	upload bool
	scopes []string
}

func (s *Store) put(d digest.Digest, mediaType string, data []byte, from origin) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		return fmt.Errorf("%w: got %s, want %s", ErrDigestMismatch, got, d)
	}
	if s.Contains(d) {
		return nil
	}
	if err := s.checkAvailable(); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.tmpDir, "put-*")
	if err != nil {
		s.diskError(err)
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	_, err = tmp.Write(data)
	if err == nil && !s.opts.NoSync {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		s.diskError(err)
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return s.commit(Info{Digest: d, Size: int64(len(data)), MediaType: mediaType}, tmp.Name(), nil, from)
}

// commit moves a verified temp file into place and indexes it; for a fill it
// also ends the fill as committed, in the same critical section so that Join
// never sees neither the fill nor the entry. If the fill ended meanwhile
// (abandoned, store closed) nothing is committed. A new entry whose origin
// says so is queued for upload to the remote.
func (s *Store) commit(info Info, tmpPath string, f *Fill, from origin) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed && (f == nil || !f.isFinishing()) {
		os.Remove(tmpPath)
		return ErrClosed
	}
	if f != nil {
		f.mu.Lock()
		ended, ferr := f.state == stateDone, f.err
		f.mu.Unlock()
		if ended {
			os.Remove(tmpPath)
			return ferr
		}
	}
	d := info.Digest
	if s.opts.MaxSize > 0 && info.Size > s.opts.MaxSize {
		s.notKeptLocked(info, tmpPath, f)
		s.log.Debug("entry larger than max_size not kept", zap.String("digest", d.String()), zap.Int64("size", info.Size))
		return nil
	}
	fillScopes := []string(nil)
	if f != nil {
		fillScopes = sortedScopes(f.scopes)
	}
	e := s.lookupLocked(d)
	if e != nil {
		// Committed meanwhile by another path (Put racing a fill); the bytes
		// are identical, so keep the existing file and merge scopes.
		os.Remove(tmpPath)
		added := s.addScopesLocked(e, from.scopes)
		if s.addScopesLocked(e, fillScopes) {
			added = true
		}
		if added {
			if err := s.writeSidecarLocked(e); err != nil {
				s.log.Warn("cannot update cache sidecar", zap.Error(err))
			}
		}
	} else {
		scopes := scopeSetKey(append(append([]string(nil), from.scopes...), fillScopes...))
		dataPath, metaPath := s.paths(d)
		err := os.MkdirAll(filepath.Dir(dataPath), 0o755)
		var meta []byte
		if err == nil {
			meta, err = encodeSidecar(info, scopeSetMembers(scopes))
		}
		if err == nil {
			// Sidecar first: a crash between the renames leaves a sidecar
			// without data, which Open removes; never data without metadata.
			err = s.writeFileAtomic(metaPath, meta)
		}
		if err == nil {
			err = os.Rename(tmpPath, dataPath)
		}
		if err != nil {
			s.diskErrorLocked(err)
			s.notKeptLocked(info, tmpPath, f)
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		now := time.Now()
		modTime := now
		if fi, err := os.Stat(dataPath); err == nil {
			modTime = fi.ModTime()
		}
		e = s.index.add(d, info.Size, info.MediaType, s.index.scopes.add(scopes), modTime, now)
		s.index.pushFront(e)
		s.total += info.Size
		if s.disk.worked() {
			s.log.Info("blob cache disk usable again")
		}
		if from.upload {
			s.queueUpload(uploadJob{digest: d})
		}
	}
	e.used = time.Now().UnixNano()
	s.index.touch(e)
	if f != nil {
		f.endCommittedLocked(e, info.Size)
	}
	s.evictLocked()
	return nil
}

// notKeptLocked drops verified bytes the store cannot keep (bigger than
// MaxSize, or the disk failed at commit): a fill's readers still get every
// byte and a clean end, from descriptors that hold the unlinked file
// open.
func (s *Store) notKeptLocked(info Info, tmpPath string, f *Fill) {
	os.Remove(tmpPath)
	if f != nil {
		f.endCommittedLocked(nil, info.Size)
	}
}

// endVerifiedNotKept ends a verified fill without keeping its bytes, when
// the disk failed before the commit (fsync).
func (s *Store) endVerifiedNotKept(info Info, tmpPath string, f *Fill) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f.mu.Lock()
	ended := f.state == stateDone
	f.mu.Unlock()
	if ended {
		os.Remove(tmpPath)
		return
	}
	s.notKeptLocked(info, tmpPath, f)
}

// writeSidecarLocked atomically replaces the sidecar of e. Called with s.mu
// held so that concurrent scope updates of one entry cannot lose each other.
func (s *Store) writeSidecarLocked(e *entry) error {
	info := s.index.info(e)
	_, metaPath := s.paths(info.Digest)
	b, err := encodeSidecar(info, scopeSetMembers(s.index.scopes.value(e.scopes)))
	if err != nil {
		return err
	}
	return s.writeFileAtomic(metaPath, b)
}

// writeFileAtomic writes a small file via tmp/ and a rename, so readers see
// the old or the new content, never a torn one. No fsync: losing a sidecar
// or tag update in a power loss only costs a cache miss or a revalidation.
func (s *Store) writeFileAtomic(path string, b []byte) error {
	tmp, err := s.writeTemp(b)
	if err != nil {
		return err
	}
	return place(tmp, path)
}

// writeTemp writes b to a new file in tmp/ and returns its path.
func (s *Store) writeTemp(b []byte) (string, error) {
	tmp, err := os.CreateTemp(s.tmpDir, "meta-*")
	if err != nil {
		return "", err
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// place renames the temp file tmp to path, creating path's directory; on
// failure tmp is removed.
func place(tmp, path string) error {
	err := os.MkdirAll(filepath.Dir(path), 0o755)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
