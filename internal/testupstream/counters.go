package testupstream

import (
	"sync"
	"sync/atomic"
)

// Counters records what reached the upstream, so tests can assert what a
// cache saved (for example "the second pull made no manifest GET"). All
// methods are safe for concurrent use.
//
// Manifest and blob counters count requests that passed authentication
// (the 401 round trip of a client that has no token yet is not counted),
// whatever the answer (200, 404 or an injected 429). The per-listener
// counters count every request that reached a handler, including 401s and
// injected status faults.
type Counters struct {
	manifestGET, manifestHEAD atomic.Int64
	blobGET, blobHEAD         atomic.Int64
	tagList, referrers        atomic.Int64
	blobBytes                 atomic.Int64
	objectGET                 atomic.Int64
	tokens                    atomic.Int64
	registryReqs, realmReqs   atomic.Int64
	objectReqs                atomic.Int64
	rateUsed                  atomic.Int64

	mu     sync.Mutex
	perKey map[string]int64 // "kind\x00key" -> count
}

func (c *Counters) bump(kind, key string) {
	c.mu.Lock()
	if c.perKey == nil {
		c.perKey = map[string]int64{}
	}
	c.perKey[kind+"\x00"+key]++
	c.mu.Unlock()
}

func (c *Counters) get(kind, key string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.perKey[kind+"\x00"+key]
}

// ManifestGETs is the number of authorized manifest GETs (all repositories).
func (c *Counters) ManifestGETs() int64 { return c.manifestGET.Load() }

// ManifestHEADs is the number of authorized manifest HEADs.
func (c *Counters) ManifestHEADs() int64 { return c.manifestHEAD.Load() }

// ManifestGETsFor is the number of authorized manifest GETs for one repository.
func (c *Counters) ManifestGETsFor(repo string) int64 { return c.get("mget", repo) }

// ManifestHEADsFor is the number of authorized manifest HEADs for one repository.
func (c *Counters) ManifestHEADsFor(repo string) int64 { return c.get("mhead", repo) }

// BlobGETs is the number of authorized blob GETs on the registry (each one
// answered with a redirect to the object store when the blob exists).
func (c *Counters) BlobGETs() int64 { return c.blobGET.Load() }

// BlobHEADs is the number of authorized blob HEADs on the registry.
func (c *Counters) BlobHEADs() int64 { return c.blobHEAD.Load() }

// BlobGETsFor is the number of authorized registry blob GETs for one digest
// ("sha256:...").
func (c *Counters) BlobGETsFor(digest string) int64 { return c.get("bget", digest) }

// BlobHEADsFor is the number of authorized registry blob HEADs for one digest.
func (c *Counters) BlobHEADsFor(digest string) int64 { return c.get("bhead", digest) }

// ObjectStoreGETs is the number of blob GETs the object store accepted
// (valid signature, no Authorization header).
func (c *Counters) ObjectStoreGETs() int64 { return c.objectGET.Load() }

// ObjectStoreGETsFor is ObjectStoreGETs for one digest.
func (c *Counters) ObjectStoreGETsFor(digest string) int64 { return c.get("oget", digest) }

// BlobBytes is the number of blob body bytes the object store wrote.
func (c *Counters) BlobBytes() int64 { return c.blobBytes.Load() }

// TagListRequests is the number of authorized tags/list requests.
func (c *Counters) TagListRequests() int64 { return c.tagList.Load() }

// ReferrersRequests is the number of authorized referrers requests.
func (c *Counters) ReferrersRequests() int64 { return c.referrers.Load() }

// TokenRequests is the number of requests to the realm's /token (GET or
// POST), whether or not a token was issued.
func (c *Counters) TokenRequests() int64 { return c.tokens.Load() }

// RegistryRequests is the number of requests the registry listener received.
func (c *Counters) RegistryRequests() int64 { return c.registryReqs.Load() }

// RealmRequests is the number of requests the realm listener received.
func (c *Counters) RealmRequests() int64 { return c.realmReqs.Load() }

// ObjectStoreRequests is the number of requests the object store received.
func (c *Counters) ObjectStoreRequests() int64 { return c.objectReqs.Load() }

// Reset sets every counter to zero, including the rate-limit budget that
// ratelimit-remaining reports.
func (c *Counters) Reset() {
	for _, a := range []*atomic.Int64{&c.manifestGET, &c.manifestHEAD, &c.blobGET, &c.blobHEAD,
		&c.tagList, &c.referrers, &c.blobBytes, &c.objectGET, &c.tokens, &c.registryReqs,
		&c.realmReqs, &c.objectReqs, &c.rateUsed} {
		a.Store(0)
	}
	c.mu.Lock()
	c.perKey = nil
	c.mu.Unlock()
}
