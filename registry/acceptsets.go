package registry

// Accept sets: a tag record is kept per client Accept set, because the
// upstream's answer depends on it. Different clients (docker, containerd,
// crane) send different sets, and each would cost a GET of the tag, which
// Docker Hub counts. A record made for one set also answers another when
// the upstream's answer cannot differ between them:
//   - the record is an index the other set accepts: the upstream returns
//     an index to every client that accepts its type;
//   - the record is an image manifest the other set accepts, and the first
//     set accepted every index type the other one does: had the tag been
//     an index of such a type, the first client would have got it.

import (
	"strings"
	"sync"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

var indexTypes = []string{
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.index.v1+json",
}

// acceptRanges are the media ranges of an Accept that the proxy passes on
// and keys records by: the manifest and index types of Docker and OCI, and
// the wildcards that could admit them. Registries choose a manifest's form
// by these alone; any other type in an Accept changes nothing but would
// split the cache.
var acceptRanges = map[string]bool{
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
	"application/vnd.docker.distribution.manifest.v1+json":      true,
	"application/vnd.docker.distribution.manifest.v1+prettyjws": true,
	"application/vnd.oci.image.manifest.v1+json":                true,
	"application/vnd.oci.image.index.v1+json":                   true,
	"application/vnd.oci.artifact.manifest.v1+json":             true,
	"*/*":           true,
	"application/*": true,
}

func isIndexType(mt string) bool {
	for _, t := range indexTypes {
		if strings.EqualFold(mt, t) {
			return true
		}
	}
	return false
}

// acceptSets remembers which Accept sets have a record for each tag, so a
// miss for one set can look at the others. Kept in memory only: after a
// restart each set makes its own record once.
type acceptSets struct {
	mu   sync.Mutex
	sets map[string]map[string]bool // tag base key -> accept keys
}

// maxAcceptSetTags bounds the memory; past it the map starts over.
const maxAcceptSetTags = 100000

func (a *acceptSets) add(base, accept string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sets == nil || len(a.sets) >= maxAcceptSetTags {
		a.sets = map[string]map[string]bool{}
	}
	if a.sets[base] == nil {
		a.sets[base] = map[string]bool{}
	}
	a.sets[base][accept] = true
}

func (a *acceptSets) others(base, accept string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for k := range a.sets[base] {
		if k != accept {
			out = append(out, k)
		}
	}
	return out
}

// answersFor reports whether a record made for Accept set from answers a
// request with Accept set to (both as acceptKey returns them).
func answersFor(rec blobcache.Tag, from, to string) bool {
	toSet := splitSet(to)
	mt := strings.ToLower(rec.MediaType)
	if mt == "" || !toSet[mt] {
		return false
	}
	if isIndexType(mt) {
		return true
	}
	fromSet := splitSet(from)
	for _, t := range indexTypes {
		if toSet[t] && !fromSet[t] {
			return false
		}
	}
	return true
}

func splitSet(key string) map[string]bool {
	set := map[string]bool{}
	for _, t := range strings.Split(key, ",") {
		if t != "" {
			set[t] = true
		}
	}
	return set
}

// siblingTag finds a record of the tag made for another Accept set that
// answers this one, the most recently checked, and records it for this
// set too. A stale one is taken as well: like this set's own record, it
// is then revalidated with a HEAD (which Docker Hub does not count)
// rather than fetched again with a GET, and served stale if the upstream
// fails, so a tag that one client (or a prefetch) cached stays available
// to every client while the upstream is down.
func (c *Cache) siblingTag(base, accept string) (blobcache.Tag, bool) {
	var found blobcache.Tag
	for _, other := range c.accepts.others(base, accept) {
		rec, ok := c.Store.Tag(base + "\x00" + other)
		if ok && answersFor(rec, other, accept) && rec.Checked.After(found.Checked) {
			found = rec
		}
	}
	if found.Digest == "" {
		return blobcache.Tag{}, false
	}
	_ = c.Store.SetTag(base+"\x00"+accept, found)
	c.accepts.add(base, accept)
	return found, true
}
