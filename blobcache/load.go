package blobcache

// Building the index at Open: what an interrupted run left in tmp/ goes,
// every entry with a trustworthy sidecar is indexed, the rest is removed.

import (
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
)

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

// load builds the index from blobs/.
func (s *Store) load() error {
	algDirs, err := os.ReadDir(s.blobsDir)
	if err != nil {
		return fmt.Errorf("blobcache: %w", err)
	}
	var loaded []*entry
	for _, ad := range algDirs {
		alg := digest.Algorithm(ad.Name())
		if !ad.IsDir() || !alg.Available() {
			s.log.Debug("ignoring unknown file in cache", zap.String("name", ad.Name()))
			continue
		}
		prefixes, err := prefixDirs(filepath.Join(s.blobsDir, ad.Name()))
		if err != nil {
			return err
		}
		for _, prefix := range prefixes {
			dir := filepath.Join(s.blobsDir, ad.Name(), prefix)
			loaded = append(loaded, s.loadPrefix(alg, dir, prefix)...)
		}
	}
	// Oldest first, each pushed to the front: the most recent ends up in front.
	sort.Slice(loaded, func(i, j int) bool { return loaded[i].used.Before(loaded[j].used) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range loaded {
		e.elem = s.lru.PushFront(e)
		s.entries[e.info.Digest] = e
		s.total += e.info.Size
	}
	return nil
}

// loadPrefix indexes one blobs/<alg>/<xx>/ directory.
func (s *Store) loadPrefix(alg digest.Algorithm, dir, prefix string) []*entry {
	des, err := os.ReadDir(dir)
	if err != nil {
		s.log.Warn("cannot list cache directory", zap.String("dir", dir), zap.Error(err))
		return nil
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
	var out []*entry
	for _, de := range datas {
		enc := de.Name()
		d := digest.NewDigestFromEncoded(alg, enc)
		dataPath, metaPath := filepath.Join(dir, enc), filepath.Join(dir, enc+".json")
		hadMeta := metas[enc]
		delete(metas, enc)
		fi, err := de.Info()
		if err != nil {
			continue // raced with something removing it
		}
		var sc sidecar
		if hadMeta {
			b, err := os.ReadFile(metaPath)
			if err == nil {
				sc, err = parseSidecar(b, d)
			}
			if err == nil && sc.Size != fi.Size() {
				err = fmt.Errorf("size on disk %d, sidecar says %d", fi.Size(), sc.Size)
			}
			if err != nil {
				hadMeta = false
				s.log.Warn("removing cache entry with bad sidecar", zap.String("digest", d.String()), zap.Error(err))
			}
		}
		if !hadMeta {
			// A crash between sidecar and data rename, or damage: without a
			// trustworthy sidecar the entry's size and scopes are unknown.
			os.Remove(dataPath)
			os.Remove(metaPath)
			continue
		}
		used := fi.ModTime()
		if at := accessTime(fi); at.After(used) {
			used = at
		}
		e := &entry{
			info:    Info{Digest: d, Size: sc.Size, MediaType: sc.MediaType},
			modTime: fi.ModTime(),
			scopes:  make(map[string]struct{}, len(sc.Scopes)),
			used:    used,
			touched: used,
		}
		for _, sco := range sc.Scopes {
			e.scopes[sco] = struct{}{}
		}
		out = append(out, e)
	}
	// Sidecars left over have no data: a commit interrupted after the sidecar.
	for enc := range metas {
		os.Remove(filepath.Join(dir, enc+".json"))
	}
	return out
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
