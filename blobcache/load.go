package blobcache

// Building the index: what an interrupted run left in tmp/ goes at Open;
// then, in the background while the store serves, every entry with a
// trustworthy sidecar is indexed and the rest is removed.
//
// Until the loader is done, a lookup that the index misses looks on disk
// (lookupLocked): a hit for an entry the loader has not reached yet is
// found, then indexed. Everything that changes blobs/ (commit, Allow's
// sidecar writes, eviction) does so under Store.mu, so what the store sees
// on disk under that lock is settled; the loader reads without the lock and
// indexes under it only digests that are neither indexed nor forgotten
// since it began (a digest forgotten meanwhile may have lost its files
// after the loader read them).
//
// The loader only reads and removes what is inconsistent, never writes: a
// crash in the middle of it leaves the directory as a crash before it would.

import (
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
)

// loadWorkers is how many directories the loader reads at once: enough to
// keep a disk's queue busy when the page cache is cold, few enough to
// leave the CPU to the requests being served meanwhile.
const loadWorkers = 2

// loadState is the background loader's state; guarded by Store.mu but for
// stop.
type loadState struct {
	running bool
	done    chan struct{} // closed when the index is complete (or the store closed)
	stop    atomic.Bool   // Close asks the loader to end early
	quit    chan struct{} // closed with stop set: a loader held by Options.LoadGate goes

	// forgotten and forgottenTags hold what left the index while the loader
	// runs: what the loader read of them may be gone from disk since.
	forgotten     map[digest.Digest]struct{}
	forgottenTags map[[32]byte]struct{}
}

// loadDirHook, when set (tests, before Open), runs twice for each
// directory, without the lock: after the loader read it (read true), and
// after it indexed what it read.
var loadDirHook func(read bool)

func (l *loadState) stopLocked() {
	l.stop.Store(true)
	close(l.quit)
}

func (l *loadState) forgottenLocked(d digest.Digest) {
	if l.running {
		l.forgotten[d] = struct{}{}
	}
}

func (l *loadState) forgottenTagLocked(name [32]byte) {
	if l.running {
		l.forgottenTags[name] = struct{}{}
	}
}

// IndexLoaded is closed when the background loader has indexed the whole
// cache directory (or the store was closed first). Until then every
// operation works, looking on disk for what the index does not hold yet.
func (s *Store) IndexLoaded() <-chan struct{} { return s.load.done }

// cleanTmp removes whatever an interrupted run left in tmp/: nothing in there
// was ever committed.
func (s *Store) cleanTmp() error {
	des, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return fmt.Errorf("blobcache: %w", err)
	}
	for _, de := range des {
		if err := os.RemoveAll(filepath.Join(s.tmpDir, de.Name())); err != nil {
			s.log.Warn("cannot remove leftover temp file", zap.Error(err))
		}
	}
	return nil
}

// startLoad starts the background loader.
func (s *Store) startLoad() {
	s.load.running = true
	s.load.done = make(chan struct{})
	s.load.quit = make(chan struct{})
	s.load.forgotten = make(map[digest.Digest]struct{})
	s.load.forgottenTags = make(map[[32]byte]struct{})
	s.loadWG.Add(1)
	go s.runLoad()
}

func (s *Store) runLoad() {
	defer s.loadWG.Done()
	if gate := s.opts.LoadGate; gate != nil {
		select {
		case <-gate:
		case <-s.load.quit:
		}
	}
	start := time.Now()
	s.loadBlobs()
	s.loadTags()
	s.mu.Lock()
	s.index.settleLoaded()
	s.load.running = false
	s.load.forgotten, s.load.forgottenTags = nil, nil
	s.evictLocked()
	n, tags, total, maxSize := s.index.count, len(s.tagIndex), s.total+s.tagTotal, s.opts.MaxSize
	s.mu.Unlock()
	close(s.load.done)
	if s.load.stop.Load() {
		return
	}
	s.log.Info("blob cache index loaded", zap.String("dir", s.opts.Dir), zap.Int("entries", n), zap.Int("tag_records", tags),
		zap.Int64("bytes", total), zap.Int64("max_size", maxSize), zap.Duration("took", time.Since(start)))
}

// loadBlobs indexes blobs/, a few prefix directories at a time.
func (s *Store) loadBlobs() {
	type job struct {
		alg    digest.Algorithm
		prefix string
	}
	var jobs []job
	algDirs, err := os.ReadDir(s.blobsDir)
	if err != nil {
		s.log.Error("cannot list the cache directory", zap.Error(err))
		return
	}
	for _, ad := range algDirs {
		alg := digest.Algorithm(ad.Name())
		if !ad.IsDir() || !alg.Available() {
			s.log.Debug("ignoring unknown file in cache", zap.String("name", ad.Name()))
			continue
		}
		prefixes, err := prefixDirs(filepath.Join(s.blobsDir, ad.Name()))
		if err != nil {
			s.log.Error("cannot list the cache directory", zap.Error(err))
			continue
		}
		for _, p := range prefixes {
			jobs = append(jobs, job{alg, p})
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range loadWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(jobs) || s.load.stop.Load() {
					return
				}
				s.loadPrefix(jobs[i].alg, jobs[i].prefix)
				if loadDirHook != nil {
					loadDirHook(false)
				}
			}
		}()
	}
	wg.Wait()
}

// found is an entry as the loader read it from disk.
type found struct {
	d       digest.Digest
	sc      sidecar
	modTime time.Time
	used    time.Time
}

// loadPrefix indexes one blobs/<alg>/<xx>/ directory: it reads without the
// lock, then indexes and cleans under it.
func (s *Store) loadPrefix(alg digest.Algorithm, prefix string) {
	dir := filepath.Join(s.blobsDir, string(alg), prefix)
	des, err := os.ReadDir(dir)
	if err != nil {
		s.log.Warn("cannot list cache directory", zap.String("dir", dir), zap.Error(err))
		return
	}
	valid := func(enc string) bool { return alg.Validate(enc) == nil && enc[:2] == prefix }
	metas := make(map[string]bool)
	var datas []fs.DirEntry
	for _, de := range des {
		name := de.Name()
		if enc, ok := strings.CutSuffix(name, ".json"); ok {
			if valid(enc) && de.Type().IsRegular() {
				metas[enc] = true
			}
			continue
		}
		if valid(name) && de.Type().IsRegular() {
			datas = append(datas, de)
		}
	}
	var good []found
	var bad []digest.Digest // data without a trustworthy sidecar
	for _, de := range datas {
		enc := de.Name()
		d := digest.NewDigestFromEncoded(alg, enc)
		hadMeta := metas[enc]
		delete(metas, enc)
		fi, err := de.Info()
		if err != nil {
			continue // raced with something removing it
		}
		if !hadMeta {
			bad = append(bad, d)
			continue
		}
		sc, err := readSidecar(filepath.Join(dir, enc+".json"), d, fi.Size())
		if err != nil {
			s.log.Warn("removing cache entry with bad sidecar", zap.String("digest", d.String()), zap.Error(err))
			bad = append(bad, d)
			continue
		}
		good = append(good, found{d: d, sc: sc, modTime: fi.ModTime(), used: usedTime(fi)})
	}
	if loadDirHook != nil {
		loadDirHook(true)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range good {
		if s.index.find(f.d) != nil || s.wasForgottenLocked(f.d) {
			continue // indexed meanwhile (a hit, a commit): what it knows is newer
		}
		e := s.index.add(f.d, f.sc.Size, f.sc.MediaType, s.index.scopes.add(scopeSetKey(f.sc.Scopes)), f.modTime, f.used)
		s.index.heapPush(e)
		s.total += f.sc.Size
	}
	// What is neither indexed nor forgotten is as the loader read it: a
	// commit or a hit would have indexed it.
	for _, d := range bad {
		if s.index.find(d) == nil && !s.wasForgottenLocked(d) {
			// A crash between sidecar and data rename, or damage: without a
			// trustworthy sidecar the entry's size and scopes are unknown.
			dataPath, metaPath := s.paths(d)
			os.Remove(dataPath)
			os.Remove(metaPath)
		}
	}
	// Sidecars left over have no data: a commit interrupted after the sidecar.
	for enc := range metas {
		d := digest.NewDigestFromEncoded(alg, enc)
		if s.index.find(d) == nil && !s.wasForgottenLocked(d) {
			os.Remove(filepath.Join(dir, enc+".json"))
		}
	}
	s.evictLocked() // max_size holds for what is indexed
}

func (s *Store) wasForgottenLocked(d digest.Digest) bool {
	_, ok := s.load.forgotten[d]
	return ok
}

// readSidecar reads and checks the sidecar of d, whose data holds size bytes.
func readSidecar(path string, d digest.Digest, size int64) (sidecar, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return sidecar{}, err
	}
	sc, err := parseSidecar(b, d)
	if err == nil && sc.Size != size {
		err = fmt.Errorf("size on disk %d, sidecar says %d", size, sc.Size)
	}
	return sc, err
}

// usedTime is when a file was last used: its atime (which Get writes back
// now and then) or its mtime, whichever is later.
func usedTime(fi fs.FileInfo) time.Time {
	used := fi.ModTime()
	if at := accessTime(fi); at.After(used) {
		used = at
	}
	return used
}

// lookupLocked returns d's entry: from the index, or, while the loader
// runs, from disk (then indexed, placed by its recorded use among what the
// loader indexed). An entry on disk that is not consistent is a miss here;
// the loader removes it when it gets there.
func (s *Store) lookupLocked(d digest.Digest) *entry {
	if e := s.index.find(d); e != nil || !s.load.running {
		return e
	}
	dataPath, metaPath := s.paths(d)
	fi, err := os.Stat(dataPath)
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	sc, err := readSidecar(metaPath, d, fi.Size())
	if err != nil {
		return nil
	}
	e := s.index.add(d, sc.Size, sc.MediaType, s.index.scopes.add(scopeSetKey(sc.Scopes)), fi.ModTime(), usedTime(fi))
	s.index.heapPush(e)
	s.total += sc.Size
	return e
}

// prefixDirs lists the directories under dir that the store spreads its
// files over, named by two hex digits; anything else there is ignored.
func prefixDirs(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("blobcache: %w", err)
	}
	var names []string
	for _, de := range des {
		if de.IsDir() && len(de.Name()) == 2 && isLowerHex(de.Name()) {
			names = append(names, de.Name())
		}
	}
	return names, nil
}

func isLowerHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// loadTags indexes the records under tags/ from file stats alone, placed
// behind what was used since the store opened, in the order of their use.
func (s *Store) loadTags() {
	prefixes, err := prefixDirs(s.tagsDir)
	if err != nil {
		s.log.Error("cannot list tag records", zap.Error(err))
		return
	}
	var loaded []*tagEntry
	for _, prefix := range prefixes {
		if s.load.stop.Load() {
			return
		}
		des, err := os.ReadDir(filepath.Join(s.tagsDir, prefix))
		if err != nil {
			s.log.Warn("cannot list tag records", zap.String("dir", prefix), zap.Error(err))
			continue
		}
		for _, de := range des {
			name, ok := parseTagFileName(de.Name(), prefix)
			if !ok || !de.Type().IsRegular() {
				continue
			}
			fi, err := de.Info()
			if err != nil {
				continue
			}
			loaded = append(loaded, &tagEntry{name: name, size: tagSize(fi.Size()), used: usedTime(fi)})
		}
	}
	sort.Slice(loaded, func(i, j int) bool { return loaded[i].used.After(loaded[j].used) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, te := range loaded {
		if _, ok := s.tagIndex[te.name]; ok {
			continue
		}
		if _, ok := s.load.forgottenTags[te.name]; ok {
			continue
		}
		te.elem = s.tagLRU.PushBack(te)
		s.tagIndex[te.name] = te
		s.tagTotal += te.size
	}
}

// parseTagFileName returns the hash that names a tag record's file, if
// name is one in the directory prefix.
func parseTagFileName(name, prefix string) ([32]byte, bool) {
	var h [32]byte
	hexName, ok := strings.CutSuffix(name, ".json")
	if !ok || len(hexName) != 64 || !isLowerHex(hexName) || hexName[:2] != prefix {
		return h, false
	}
	if _, err := hex.Decode(h[:], []byte(hexName)); err != nil {
		return h, false
	}
	return h, true
}
