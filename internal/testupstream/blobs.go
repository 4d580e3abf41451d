package testupstream

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// blobSource is what the store keeps per digest: either bytes in memory or a
// generator that recomputes the bytes on demand, so that 1 GiB test blobs
// cost no memory.
type blobSource interface {
	size() int64
	open() io.ReadSeeker
}

type memBlob []byte

func (m memBlob) size() int64         { return int64(len(m)) }
func (m memBlob) open() io.ReadSeeker { return bytes.NewReader(m) }

// blobStore is the content-addressed store behind both the ggcr registry
// (pushes land here through registry.BlobPutHandler) and the object store
// (which serves the bytes). It also records which repository links which
// blob, because Docker Hub answers 404 for a blob asked through a repository
// that does not contain it, and a proxy must not be able to use a public
// repository path to read a private repository's blob.
type blobStore struct {
	mu    sync.RWMutex
	blobs map[string]blobSource
	links map[string]map[string]bool // repo -> digest -> linked
}

func newBlobStore() *blobStore {
	return &blobStore{blobs: map[string]blobSource{}, links: map[string]map[string]bool{}}
}

func (s *blobStore) put(repo string, h v1.Hash, src blobSource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs[h.String()] = src
	if repo != "" {
		s.linkLocked(repo, h)
	}
}

func (s *blobStore) linkLocked(repo string, h v1.Hash) {
	m := s.links[repo]
	if m == nil {
		m = map[string]bool{}
		s.links[repo] = m
	}
	m[h.String()] = true
}

// link makes repo link h if the store has it, and reports whether it does.
func (s *blobStore) link(repo string, h v1.Hash) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.blobs[h.String()]; !ok {
		return false
	}
	s.linkLocked(repo, h)
	return true
}

func (s *blobStore) get(h v1.Hash) (blobSource, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, ok := s.blobs[h.String()]
	return b, ok
}

// getLinked returns the blob only if repo links it.
func (s *blobStore) getLinked(repo string, h v1.Hash) (blobSource, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.links[repo][h.String()] {
		return nil, false
	}
	b, ok := s.blobs[h.String()]
	return b, ok
}

// registryHandler adapts the store to ggcr's BlobHandler interfaces. Blob
// GET/HEAD never reach ggcr (the front answers them), so Get/Stat matter only
// for ggcr's own checks during pushes.
type registryHandler struct{ s *blobStore }

var (
	_ registry.BlobHandler     = registryHandler{}
	_ registry.BlobStatHandler = registryHandler{}
	_ registry.BlobPutHandler  = registryHandler{}
)

func (r registryHandler) Get(_ context.Context, _ string, h v1.Hash) (io.ReadCloser, error) {
	b, ok := r.s.get(h)
	if !ok {
		return nil, registry.ErrNotFound
	}
	return io.NopCloser(b.open()), nil
}

func (r registryHandler) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	b, ok := r.s.get(h)
	if !ok {
		return 0, registry.ErrNotFound
	}
	return b.size(), nil
}

func (r registryHandler) Put(_ context.Context, repo string, h v1.Hash, rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	r.s.put(repo, h, memBlob(data))
	return nil
}

// GeneratedBlob is a deterministic pseudo-random blob that is never held in
// memory: its bytes are an AES-CTR keystream derived from Seed, recomputed on
// every read. Counter mode makes any offset reachable in O(1), so Range reads
// and seeks are cheap. The digest is computed once, by streaming, when the
// blob is created.
type GeneratedBlob struct {
	Seed   int64
	Size   int64
	Digest v1.Hash
	block  cipher.Block
}

// NewGeneratedBlob creates a generated blob of size bytes and computes its
// sha256 digest by reading it once (about a second per GiB on one core).
func NewGeneratedBlob(seed, size int64) (*GeneratedBlob, error) {
	if size < 0 {
		return nil, errors.New("testupstream: negative blob size")
	}
	var key [16]byte
	sum := sha256.Sum256(binary.BigEndian.AppendUint64([]byte("testupstream-generated-blob"), uint64(seed)))
	copy(key[:], sum[:])
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	g := &GeneratedBlob{Seed: seed, Size: size, block: block}
	hasher := sha256.New()
	r := g.Open()
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(hasher, r, buf); err != nil {
		return nil, err
	}
	g.Digest = v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", hasher.Sum(nil))}
	return g, nil
}

// Open returns a fresh reader positioned at offset 0. It implements
// io.ReadSeeker and io.ReaderAt.
func (g *GeneratedBlob) Open() *GeneratedReader {
	r := &GeneratedReader{g: g}
	r.seekTo(0)
	return r
}

func (g *GeneratedBlob) size() int64         { return g.Size }
func (g *GeneratedBlob) open() io.ReadSeeker { return g.Open() }

// GeneratedReader reads a GeneratedBlob. Not safe for concurrent use except
// ReadAt, which does not touch the read position.
type GeneratedReader struct {
	g      *GeneratedBlob
	off    int64
	stream cipher.Stream
}

// streamAt returns a keystream positioned at absolute offset off.
func (g *GeneratedBlob) streamAt(off int64) cipher.Stream {
	var iv [16]byte
	binary.BigEndian.PutUint64(iv[8:], uint64(off/aes.BlockSize))
	s := cipher.NewCTR(g.block, iv[:])
	if skip := off % aes.BlockSize; skip > 0 {
		var junk [aes.BlockSize]byte
		s.XORKeyStream(junk[:skip], junk[:skip])
	}
	return s
}

func (r *GeneratedReader) seekTo(off int64) {
	r.off = off
	r.stream = r.g.streamAt(off)
}

func (r *GeneratedReader) Read(p []byte) (int, error) {
	if r.off >= r.g.Size {
		return 0, io.EOF
	}
	if rem := r.g.Size - r.off; int64(len(p)) > rem {
		p = p[:rem]
	}
	clear(p)
	r.stream.XORKeyStream(p, p)
	r.off += int64(len(p))
	return len(p), nil
}

func (r *GeneratedReader) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = r.off + offset
	case io.SeekEnd:
		abs = r.g.Size + offset
	default:
		return 0, errors.New("testupstream: bad whence")
	}
	if abs < 0 {
		return 0, errors.New("testupstream: negative position")
	}
	r.seekTo(abs)
	return abs, nil
}

func (r *GeneratedReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.g.Size {
		return 0, io.EOF
	}
	n := len(p)
	var err error
	if rem := r.g.Size - off; int64(n) > rem {
		n = int(rem)
		err = io.EOF
	}
	q := p[:n]
	clear(q)
	r.g.streamAt(off).XORKeyStream(q, q)
	return n, err
}
