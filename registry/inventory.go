package registry

// The inventory of a cache directory, image by image, and its purge: what
// an operator sees and drops through the admin API. The store knows
// entries by digest and tag records by opaque key; this file reads them as
// a registry does: tag records keyed as tagKey builds them, manifests
// found by their media type, each manifest's blobs (config, layers) and an
// index's platform manifests read from the manifests themselves.

import (
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

// Catalog is one cache directory's store seen through the handlers that
// use it.
type Catalog struct {
	Store *blobcache.Store
	// Caches are the registry caches over Store: a purge drops what it
	// removes from their memory too.
	Caches []*Cache
	// Upstreams are those the handlers over Store serve: records are
	// keyed by the upstream's URL, shown by its name.
	Upstreams []Upstream
}

// ImageRef names what a purge drops: a repository of an upstream, or one
// of its tags or manifests.
type ImageRef struct {
	Upstream   string // a name: docker.io, ghcr.io, host:port
	Repository string
	Tag        string
	Digest     digest.Digest
}

var anchoredDomain = regexp.MustCompile(`^` + reference.DomainRegexp.String() + `$`)

// CheckUpstreamName validates an upstream name as the admin API takes it
// (docker.io, ghcr.io, host:port) and returns its canonical form
// (registry-1.docker.io is docker.io).
func CheckUpstreamName(s string) (string, *Error) {
	name := strings.ToLower(s)
	if !anchoredDomain.MatchString(name) {
		return "", &Error{Status: http.StatusBadRequest, Code: CodeNameInvalid,
			Message: "invalid upstream name " + quote(s) + ": give a registry host such as docker.io or registry.example.com:5000"}
	}
	if canonical, ok := aliases[name]; ok {
		name = canonical
	}
	return name, nil
}

// CheckRepository validates a repository name of the upstream called
// upstream, with Docker Hub's one-component names under library/ as its
// clients are redirected.
func CheckRepository(upstream, name string) (string, *Error) {
	if err := validateName(name); err != nil {
		return "", err
	}
	if upstream == DockerHub && !strings.Contains(name, "/") {
		name = "library/" + name
	}
	return name, nil
}

// ParseImageRef parses <upstream>/<repository>[:<tag>|@<digest>], the
// path of the admin API's DELETE of images.
func ParseImageRef(s string) (ImageRef, *Error) {
	up, rest, ok := strings.Cut(s, "/")
	if !ok || rest == "" {
		return ImageRef{}, &Error{Status: http.StatusBadRequest, Code: CodeNameInvalid,
			Message: "give <upstream>/<repository>[:<tag>|@<digest>], such as docker.io/library/alpine:3.20"}
	}
	name, perr := CheckUpstreamName(up)
	if perr != nil {
		return ImageRef{}, perr
	}
	ref := ImageRef{Upstream: name}
	repo := rest
	if r, d, ok := strings.Cut(rest, "@"); ok {
		dg, err := parseDigest(d)
		if err != nil {
			return ImageRef{}, err
		}
		repo, ref.Digest = r, dg
	} else if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
		repo, ref.Tag = rest[:i], rest[i+1:]
		if !anchoredTag.MatchString(ref.Tag) {
			return ImageRef{}, errTagInvalid(ref.Tag)
		}
	}
	if ref.Repository, perr = CheckRepository(name, repo); perr != nil {
		return ImageRef{}, perr
	}
	return ref, nil
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Errors of the catalog.
var (
	// ErrIndexLoading: the store's index is still loading, so what is
	// still needed cannot be told yet.
	ErrIndexLoading = errors.New("the cache index is still loading; try again in a moment")
	// ErrUnknownUpstream: no handler over the store serves the upstream.
	ErrUnknownUpstream = errors.New("no docker_proxy handler using this cache serves the upstream")
	// ErrNotCached: the cache holds no tag record nor manifest of what a
	// purge names.
	ErrNotCached = errors.New("nothing of it is cached")
)

// Inventory is what a cache directory holds, repository by repository.
type Inventory struct {
	// Complete is false while the store's index loads: what is listed
	// is what is indexed so far.
	Complete     bool             `json:"complete"`
	Repositories []RepositoryView `json:"repositories"`
}

// RepositoryView is a cached repository: its tags and manifests.
type RepositoryView struct {
	Upstream   string    `json:"upstream"` // its name; its URL if no handler serves it now
	URL        string    `json:"url"`
	Repository string    `json:"repository"`
	Tags       []TagView `json:"tags"`
	// Manifests are those its tags point at and those cached for it by
	// digest; an index's platform manifests are listed under it.
	Manifests []ManifestView `json:"manifests"`
	LastUsed  time.Time      `json:"last_used"`
}

// TagView is a tag record: where the tag pointed when last checked. One
// tag may have several (clients that accept an index, clients that do not).
type TagView struct {
	Tag       string        `json:"tag"`
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"media_type,omitempty"`
	Checked   time.Time     `json:"checked"`
	LastUsed  time.Time     `json:"last_used"`
}

// ManifestView is a manifest: cached or not (a tag may point at one the
// cache no longer holds), its size (config and layers, or for an index the
// sum of its cached platforms'), and how much of that is cached.
type ManifestView struct {
	Digest      digest.Digest `json:"digest"`
	MediaType   string        `json:"media_type,omitempty"`
	Platform    string        `json:"platform,omitempty"` // as an index lists it
	Cached      bool          `json:"cached"`
	Size        int64         `json:"size"`
	CachedBytes int64         `json:"cached_bytes"`
	Blobs       int           `json:"blobs"`
	CachedBlobs int           `json:"cached_blobs"`
	LastUsed    *time.Time    `json:"last_used,omitempty"`
	// Platforms are an index's manifests.
	Platforms []ManifestView `json:"platforms,omitempty"`
}

// manifestTypes are the media types the proxy stores manifests under.
var manifestTypes = map[string]bool{
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
	"application/vnd.oci.image.manifest.v1+json":                true,
	"application/vnd.oci.image.index.v1+json":                   true,
	"application/vnd.oci.artifact.manifest.v1+json":             true,
}

func isManifestType(mt string) bool {
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = mt[:i]
	}
	return manifestTypes[strings.ToLower(strings.TrimSpace(mt))]
}

// manifestDoc is what the inventory reads of a manifest: an image
// manifest's config and layers (an artifact's blobs), an index's manifests.
type manifestDoc struct {
	MediaType string               `json:"mediaType"`
	Config    *ocispec.Descriptor  `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
	Blobs     []ocispec.Descriptor `json:"blobs"`
	Manifests []ocispec.Descriptor `json:"manifests"`
}

// contents are the blobs an image manifest needs.
func (m *manifestDoc) contents() []ocispec.Descriptor {
	var out []ocispec.Descriptor
	if m.Config != nil {
		out = append(out, *m.Config)
	}
	out = append(out, m.Layers...)
	return append(out, m.Blobs...)
}

// repoKey names a repository of an upstream as records and scopes do: by
// the upstream's URL.
type repoKey struct{ url, name string }

// parseTagKey reads a key that tagKey built: URL, name, tag, Accept.
func parseTagKey(key string) (repoKey, string, bool) {
	parts := strings.Split(key, "\x00")
	if len(parts) != 4 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return repoKey{}, "", false
	}
	return repoKey{parts[0], parts[1]}, parts[2], true
}

// parseScope reads a scope that accessScope built: identity|URL/name.
func parseScope(scope string) (repoKey, bool) {
	i := strings.LastIndexByte(scope, '|')
	if i < 0 {
		return repoKey{}, false
	}
	rest := scope[i+1:]
	s := strings.Index(rest, "://")
	if s < 0 {
		return repoKey{}, false
	}
	j := strings.IndexByte(rest[s+3:], '/')
	if j < 0 {
		return repoKey{}, false
	}
	j += s + 3
	return repoKey{rest[:j], rest[j+1:]}, true
}

// snapshot is the store's tag records and manifests at one moment; a
// manifest is read when first asked for.
type snapshot struct {
	complete  bool
	records   []record
	manifests map[digest.Digest]blobcache.Entry
	docs      map[digest.Digest]*manifestDoc // read so far; nil: unreadable
	store     *blobcache.Store
}

type record struct {
	blobcache.TagRecord
	repo repoKey
	tag  string
}

func (c *Catalog) snapshot() *snapshot {
	recs, recsComplete := c.Store.TagRecords()
	entries, entriesComplete := c.Store.Entries(isManifestType)
	s := &snapshot{
		complete:  recsComplete && entriesComplete,
		manifests: make(map[digest.Digest]blobcache.Entry, len(entries)),
		docs:      make(map[digest.Digest]*manifestDoc, len(entries)),
		store:     c.Store,
	}
	for _, r := range recs {
		if repo, tag, ok := parseTagKey(r.Key); ok {
			s.records = append(s.records, record{TagRecord: r, repo: repo, tag: tag})
		}
	}
	for _, e := range entries {
		s.manifests[e.Digest] = e
	}
	return s
}

// doc reads the cached manifest d, or returns nil if it is not a cached
// manifest (or cannot be read: removed meanwhile, not JSON).
func (s *snapshot) doc(d digest.Digest) *manifestDoc {
	if doc, read := s.docs[d]; read {
		return doc
	}
	var doc *manifestDoc
	if _, ok := s.manifests[d]; ok {
		if body, err := s.store.Peek(d, maxManifestSize); err == nil {
			var m manifestDoc
			if json.Unmarshal(body, &m) == nil {
				doc = &m
			}
		}
	}
	s.docs[d] = doc
	return doc
}

// children are the platform manifests of index d, if d is a cached index.
func (s *snapshot) children(d digest.Digest) []digest.Digest {
	doc := s.doc(d)
	if doc == nil {
		return nil
	}
	out := make([]digest.Digest, 0, len(doc.Manifests))
	for _, m := range doc.Manifests {
		out = append(out, m.Digest)
	}
	return out
}

// closure is roots with the platform manifests of every index among them,
// and theirs.
func (s *snapshot) closure(roots map[digest.Digest]bool) map[digest.Digest]bool {
	out := make(map[digest.Digest]bool, len(roots))
	var walk func(d digest.Digest)
	walk = func(d digest.Digest) {
		if out[d] {
			return
		}
		out[d] = true
		for _, c := range s.children(d) {
			walk(c)
		}
	}
	for d := range roots {
		walk(d)
	}
	return out
}

// nameOf is the name of the upstream at url, or url when no handler over
// the store serves it now.
func (c *Catalog) nameOf(url string) string {
	for _, u := range c.Upstreams {
		if u.String() == url {
			return u.Name
		}
	}
	return url
}

// urlsOf are the URLs the handlers over the store give the upstream name.
func (c *Catalog) urlsOf(name string) map[string]bool {
	urls := map[string]bool{}
	for _, u := range c.Upstreams {
		if u.Name == name {
			urls[u.String()] = true
		}
	}
	return urls
}

// Images lists the cached repositories of the upstream called upstream
// ("" for all) named repository ("" for all).
func (c *Catalog) Images(upstream, repository string) Inventory {
	s := c.snapshot()
	var urls map[string]bool
	if upstream != "" {
		urls = c.urlsOf(upstream)
	}
	wanted := func(r repoKey) bool {
		return (urls == nil || urls[r.url]) && (repository == "" || r.name == repository)
	}
	repos := map[repoKey]*repoBuild{}
	get := func(r repoKey) *repoBuild {
		b := repos[r]
		if b == nil {
			b = &repoBuild{roots: map[digest.Digest]bool{}, tags: map[string]TagView{}}
			repos[r] = b
		}
		return b
	}
	for _, r := range s.records {
		if !wanted(r.repo) {
			continue
		}
		b := get(r.repo)
		b.roots[r.Digest] = true
		// One view per tag and digest: records of several Accept sets
		// that agree are one.
		k := r.tag + "@" + r.Digest.String()
		tv := b.tags[k]
		if r.Used.After(tv.LastUsed) {
			tv.LastUsed = r.Used
		}
		if r.Checked.After(tv.Checked) {
			tv.Checked = r.Checked
		}
		tv.Tag, tv.Digest, tv.MediaType = r.tag, r.Digest, r.MediaType
		b.tags[k] = tv
	}
	for d, e := range s.manifests {
		for _, sc := range e.Scopes {
			if r, ok := parseScope(sc); ok && wanted(r) {
				get(r).roots[d] = true
			}
		}
	}
	inv := Inventory{Complete: s.complete, Repositories: []RepositoryView{}}
	for r, b := range repos {
		inv.Repositories = append(inv.Repositories, b.view(s, r, c.nameOf(r.url)))
	}
	sort.Slice(inv.Repositories, func(i, j int) bool {
		a, b := inv.Repositories[i], inv.Repositories[j]
		if a.Upstream != b.Upstream {
			return a.Upstream < b.Upstream
		}
		return a.Repository < b.Repository
	})
	return inv
}

type repoBuild struct {
	roots map[digest.Digest]bool
	tags  map[string]TagView
}

func (b *repoBuild) view(s *snapshot, r repoKey, name string) RepositoryView {
	v := RepositoryView{Upstream: name, URL: r.url, Repository: r.name, Tags: []TagView{}, Manifests: []ManifestView{}}
	for _, t := range b.tags {
		v.Tags = append(v.Tags, t)
		if t.LastUsed.After(v.LastUsed) {
			v.LastUsed = t.LastUsed
		}
	}
	sort.Slice(v.Tags, func(i, j int) bool {
		if v.Tags[i].Tag != v.Tags[j].Tag {
			return v.Tags[i].Tag < v.Tags[j].Tag
		}
		return v.Tags[i].Digest < v.Tags[j].Digest
	})
	// An index's platform manifests show under it, not beside it.
	under := map[digest.Digest]bool{}
	for d := range b.roots {
		for _, c := range s.children(d) {
			under[c] = true
		}
	}
	for d := range b.roots {
		if under[d] {
			continue
		}
		mt := s.manifests[d].MediaType
		for _, t := range b.tags {
			if mt == "" && t.Digest == d {
				mt = t.MediaType // not cached: as the tag record says
			}
		}
		mv := s.manifestView(d, mt, "")
		if mv.LastUsed != nil && mv.LastUsed.After(v.LastUsed) {
			v.LastUsed = *mv.LastUsed
		}
		v.Manifests = append(v.Manifests, mv)
	}
	sort.Slice(v.Manifests, func(i, j int) bool { return v.Manifests[i].Digest < v.Manifests[j].Digest })
	return v
}

// manifestView describes manifest d (mediaType as known before it is read).
func (s *snapshot) manifestView(d digest.Digest, mediaType, platform string) ManifestView {
	mv := ManifestView{Digest: d, MediaType: mediaType, Platform: platform}
	e, cached := s.manifests[d]
	doc := s.doc(d)
	if !cached || doc == nil {
		return mv
	}
	mv.Cached = true
	mv.MediaType = e.MediaType
	used := e.Used
	mv.LastUsed = &used
	if len(doc.Manifests) > 0 {
		for _, m := range doc.Manifests {
			pv := s.manifestView(m.Digest, m.MediaType, platformString(m.Platform))
			mv.Size += pv.Size
			mv.CachedBytes += pv.CachedBytes
			mv.Blobs += pv.Blobs
			mv.CachedBlobs += pv.CachedBlobs
			mv.Platforms = append(mv.Platforms, pv)
		}
		return mv
	}
	for _, desc := range doc.contents() {
		mv.Size += desc.Size
		mv.Blobs++
		if info, err := s.store.Stat(desc.Digest); err == nil && info.Size == desc.Size {
			mv.CachedBytes += desc.Size
			mv.CachedBlobs++
		}
	}
	return mv
}

// platformString is os/architecture[/variant], as docker's --platform
// names it.
func platformString(p *ocispec.Platform) string {
	if p == nil {
		return ""
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// PurgeReport says what a purge removed from the cache directory and
// what it kept because another cached image still needs it.
type PurgeReport struct {
	Removed PurgeRemoved `json:"removed"`
	Kept    PurgeKept    `json:"kept"`
}

// PurgeRemoved is what a purge took out: tag records (and the tags they
// were for), manifests, blobs, and the bytes of those.
type PurgeRemoved struct {
	Tags       []string        `json:"tags"`
	TagRecords int             `json:"tag_records"`
	Manifests  []digest.Digest `json:"manifests"`
	Blobs      []digest.Digest `json:"blobs"`
	Bytes      int64           `json:"bytes"`
}

// PurgeKept is what a purge left because other cached manifests (of any
// repository, any upstream) or tags still need it.
type PurgeKept struct {
	Manifests []digest.Digest `json:"manifests"`
	Blobs     []digest.Digest `json:"blobs"`
	Bytes     int64           `json:"bytes"`
}

// Purge forgets ref's tag records and manifests (a whole repository
// without tag or digest) and deletes the blobs that no other cached
// manifest needs. It refuses while the index loads, when it cannot know
// what else is cached. A manifest or blob being read now is removed all
// the same: its reader goes on with the file it has open.
func (c *Catalog) Purge(ref ImageRef) (PurgeReport, error) {
	urls := c.urlsOf(ref.Upstream)
	if len(urls) == 0 {
		return PurgeReport{}, ErrUnknownUpstream
	}
	s := c.snapshot()
	if !s.complete {
		return PurgeReport{}, ErrIndexLoading
	}
	inRepo := func(r repoKey) bool { return urls[r.url] && r.name == ref.Repository }

	// What the reference selects: tag records, and the manifests they
	// and the repository's own scopes point at, with their platforms.
	roots := map[digest.Digest]bool{}
	var selected, others []record
	for _, r := range s.records {
		pick := inRepo(r.repo) && (ref.Tag == "" && ref.Digest == "" ||
			ref.Tag != "" && r.tag == ref.Tag ||
			ref.Digest != "" && r.Digest == ref.Digest)
		if pick {
			selected = append(selected, r)
			roots[r.Digest] = true
		} else {
			others = append(others, r)
		}
	}
	switch {
	case ref.Digest != "":
		roots[ref.Digest] = true
	case ref.Tag == "":
		for d, e := range s.manifests {
			for _, sc := range e.Scopes {
				if r, ok := parseScope(sc); ok && inRepo(r) {
					roots[d] = true
				}
			}
		}
	}
	chosen := s.closure(roots)
	found := len(selected) > 0
	for d := range chosen {
		if _, cached := s.manifests[d]; cached {
			found = true
		}
	}
	if !found {
		return PurgeReport{}, ErrNotCached
	}

	// What stays needed: every tag record left, the manifests cached for
	// other repositories, every manifest not chosen; with their
	// platforms.
	needed := map[digest.Digest]bool{}
	for _, r := range others {
		needed[r.Digest] = true
	}
	for d, e := range s.manifests {
		if !chosen[d] {
			needed[d] = true
			continue
		}
		for _, sc := range e.Scopes {
			if r, ok := parseScope(sc); ok && !inRepo(r) {
				needed[d] = true
			}
		}
	}
	needed = s.closure(needed)

	rep := PurgeReport{
		Removed: PurgeRemoved{Manifests: []digest.Digest{}, Blobs: []digest.Digest{}},
		Kept:    PurgeKept{Manifests: []digest.Digest{}, Blobs: []digest.Digest{}},
	}
	var removeManifests, keptManifests []digest.Digest
	for d := range chosen {
		if _, cached := s.manifests[d]; !cached {
			continue
		}
		if needed[d] {
			keptManifests = append(keptManifests, d)
		} else {
			removeManifests = append(removeManifests, d)
		}
	}
	removing := map[digest.Digest]bool{}
	for _, d := range removeManifests {
		removing[d] = true
	}
	// Blobs: those of the manifests removed that no manifest left needs.
	stillUsed := map[digest.Digest]bool{}
	for d := range s.manifests {
		doc := s.doc(d)
		if removing[d] || doc == nil {
			continue
		}
		for _, desc := range doc.contents() {
			stillUsed[desc.Digest] = true
		}
	}
	var removeBlobs []digest.Digest
	kept := map[digest.Digest]bool{}
	for _, d := range removeManifests {
		doc := s.doc(d)
		if doc == nil {
			continue
		}
		for _, desc := range doc.contents() {
			switch {
			case stillUsed[desc.Digest]:
				if !kept[desc.Digest] && s.store.Contains(desc.Digest) {
					kept[desc.Digest] = true
					rep.Kept.Blobs = append(rep.Kept.Blobs, desc.Digest)
					if info, err := s.store.Stat(desc.Digest); err == nil {
						rep.Kept.Bytes += info.Size
					}
				}
			case !removing[desc.Digest]:
				removing[desc.Digest] = true
				removeBlobs = append(removeBlobs, desc.Digest)
			}
		}
	}

	// A manifest kept for others is no longer this repository's, unless
	// a tag of it left still leads there.
	ownLeft := map[digest.Digest]bool{}
	for _, r := range others {
		if inRepo(r.repo) {
			ownLeft[r.Digest] = true
		}
	}
	ownLeft = s.closure(ownLeft)
	for _, d := range keptManifests {
		rep.Kept.Manifests = append(rep.Kept.Manifests, d)
		rep.Kept.Bytes += s.manifests[d].Size
		if !ownLeft[d] {
			_ = c.Store.DropScopes(d, func(sc string) bool {
				r, ok := parseScope(sc)
				return ok && inRepo(r)
			})
		}
	}

	// Remove: tag records first, so that no tag leads to a manifest gone.
	keys := make([]string, 0, len(selected))
	tags := map[string]bool{}
	for _, r := range selected {
		keys = append(keys, r.Key)
		tags[r.tag] = true
	}
	rep.Removed.TagRecords = c.Store.RemoveTags(keys...)
	rep.Removed.Tags = sortedKeys(tags)
	for _, info := range c.Store.Remove(removeManifests...) {
		rep.Removed.Manifests = append(rep.Removed.Manifests, info.Digest)
		rep.Removed.Bytes += info.Size
	}
	for _, info := range c.Store.Remove(removeBlobs...) {
		rep.Removed.Blobs = append(rep.Removed.Blobs, info.Digest)
		rep.Removed.Bytes += info.Size
	}
	for _, cache := range c.Caches {
		for d := range removing {
			cache.memory.remove(d)
		}
	}
	sortDigests(rep.Removed.Manifests)
	sortDigests(rep.Removed.Blobs)
	sortDigests(rep.Kept.Manifests)
	sortDigests(rep.Kept.Blobs)
	return rep, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortDigests(ds []digest.Digest) {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
}
