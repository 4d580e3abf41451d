package registry

// The shared tier: several instances, each with its own local store, in
// front of one upstream and one bucket on a real MinIO.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/blobcache/s3remote"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testminio"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// instance is one proxy of a shared-tier test, with the Cache-Status of
// every manifest and blob response its clients got.
type instance struct {
	t      *testing.T
	p      *Proxy
	host   string
	mu     sync.Mutex
	saw    map[string]string // "GET /v2/...": Cache-Status
	order  []string
	served []string // the requests answered 200
}

func newInstance(t *testing.T, up *testupstream.Upstream, r blobcache.Remote, tagTTL time.Duration) *instance {
	t.Helper()
	return newInstanceWith(t, up, blobcache.Options{Remote: r}, tagTTL, zap.NewNop())
}

func newInstanceWith(t *testing.T, up *testupstream.Upstream, opts blobcache.Options, tagTTL time.Duration, logger *zap.Logger) *instance {
	t.Helper()
	p, srv := newTestProxyWith(t, up, tagTTL, opts, logger)
	return &instance{t: t, p: p, host: strings.TrimPrefix(srv.URL, "http://"), saw: map[string]string{}}
}

// RoundTrip records what the instance answered.
func (in *instance) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && (strings.Contains(req.URL.Path, "/manifests/") || strings.Contains(req.URL.Path, "/blobs/")) {
		in.mu.Lock()
		k := req.Method + " " + req.URL.Path
		in.saw[k] = resp.Header.Get("Cache-Status")
		in.order = append(in.order, k)
		if resp.StatusCode == http.StatusOK {
			in.served = append(in.served, k)
		}
		in.mu.Unlock()
	}
	return resp, err
}

func (in *instance) ref(repoTag string) name.Reference {
	in.t.Helper()
	ref, err := name.ParseReference(path.Join(in.host, repoTag), name.Insecure)
	if err != nil {
		in.t.Fatal(err)
	}
	return ref
}

func (in *instance) options(auth authn.Authenticator) []remote.Option {
	if auth == nil {
		auth = authn.Anonymous
	}
	return []remote.Option{remote.WithAuth(auth), remote.WithTransport(in),
		remote.WithRetryBackoff(remote.Backoff{Duration: time.Millisecond, Steps: 1})}
}

// pullImage pulls repoTag with every layer and checks digests and bytes
// against want.
func (in *instance) pullImage(repoTag string, auth authn.Authenticator, want v1.Image) error {
	got, err := remote.Image(in.ref(repoTag), in.options(auth)...)
	if err != nil {
		return err
	}
	return testupstream.SameImage(got, want)
}

// pullIndex pulls an index and every image in it.
func (in *instance) pullIndex(repoTag string, want v1.ImageIndex) error {
	got, err := remote.Index(in.ref(repoTag), in.options(nil)...)
	if err != nil {
		return err
	}
	gd, _ := got.Digest()
	wd, _ := want.Digest()
	if gd != wd {
		return fmt.Errorf("index digest %s, want %s", gd, wd)
	}
	im, err := want.IndexManifest()
	if err != nil {
		return err
	}
	for _, desc := range im.Manifests {
		gi, err := got.Image(desc.Digest)
		if err != nil {
			return fmt.Errorf("child %s: %w", desc.Digest, err)
		}
		wi, _ := want.Image(desc.Digest)
		if err := testupstream.SameImage(gi, wi); err != nil {
			return fmt.Errorf("child %s: %w", desc.Digest, err)
		}
	}
	return nil
}

// waitUploads waits until the instance's uploads to the shared tier ended.
func (in *instance) waitUploads() {
	in.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := in.p.Cache.Store.WaitUploads(ctx); err != nil {
		in.t.Fatalf("uploads: %v", err)
	}
}

// statuses returns the Cache-Status values the instance answered, with the
// requests that got each.
func (in *instance) statuses() map[string][]string {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := map[string][]string{}
	for _, k := range in.order {
		out[in.saw[k]] = append(out[in.saw[k]], k)
	}
	return out
}

func startShared(t *testing.T) (*testminio.Server, *s3remote.Remote) {
	t.Helper()
	srv := testminio.Start(t)
	r, err := s3remote.New(s3remote.Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket, Region: "us-east-1",
		Prefix: "proxy", AccessKey: testminio.AccessKey, SecretKey: testminio.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	return srv, r
}

// TestSharedTierServesOtherInstances: what instance A pulled, instance B
// (its own empty disk, the same bucket) serves without a manifest or blob
// GET upstream, saying so in Cache-Status; and with the upstream down,
// instance C (empty disk too) still serves it, with fresh and with stale
// tag records.
func TestSharedTierServesOtherInstances(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "library/app", "v1", 3, 64<<10)
	idx := up.PushRandomIndex(t, "library/multi", "v1")
	_, shared := startShared(t)

	a := newInstance(t, up, shared, time.Hour)
	if err := a.pullImage("library/app:v1", nil, img); err != nil {
		t.Fatalf("A: %v", err)
	}
	if err := a.pullIndex("library/multi:v1", idx); err != nil {
		t.Fatalf("A, index: %v", err)
	}
	if up.Counters.ManifestGETs() == 0 || up.Counters.ObjectStoreGETs() == 0 {
		t.Fatal("A pulled nothing from the upstream")
	}
	a.waitUploads()
	up.Counters.Reset()

	b := newInstance(t, up, shared, time.Hour)
	if err := b.pullImage("library/app:v1", nil, img); err != nil {
		t.Fatalf("B: %v", err)
	}
	if err := b.pullIndex("library/multi:v1", idx); err != nil {
		t.Fatalf("B, index: %v", err)
	}
	if n, m, o := up.Counters.ManifestGETs(), up.Counters.BlobGETs(), up.Counters.ObjectStoreGETs(); n+m+o != 0 {
		t.Errorf("B made %d manifest GETs, %d blob GETs, %d object store GETs upstream; want none", n, m, o)
	}
	got := b.statuses()
	if len(got) != 1 || len(got[resultShared.CacheStatus()]) == 0 {
		t.Errorf("B's Cache-Status values: %v; want %q on every response", got, resultShared.CacheStatus())
	}
	// Served again by B: its own cache now.
	b.saw, b.order = map[string]string{}, nil
	if err := b.pullImage("library/app:v1", nil, img); err != nil {
		t.Fatalf("B again: %v", err)
	}
	if got := b.statuses(); len(got) != 1 || len(got[resultHit.CacheStatus()]) == 0 {
		t.Errorf("B's second pull: %v; want hits only", got)
	}

	if err := up.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	defer up.Faults.Reset()
	for _, ttl := range []time.Duration{time.Hour, time.Nanosecond} {
		c := newInstance(t, up, shared, ttl)
		if err := c.pullImage("library/app:v1", nil, img); err != nil {
			t.Errorf("C (tag_ttl %v), upstream down: %v", ttl, err)
		}
		if err := c.pullIndex("library/multi:v1", idx); err != nil {
			t.Errorf("C (tag_ttl %v), upstream down, index: %v", ttl, err)
		}
	}
}

// TestSharedTierWrongCopyNeverServed: a remote copy that does not match
// its digest (bytes overwritten in the bucket, or cut short) is never
// served as good: a manifest falls back to the upstream within the
// request; a blob aborts the response, as bad upstream bytes do, and the
// next request gets the upstream's bytes, which replace the bad copy.
func TestSharedTierWrongCopyNeverServed(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "library/app", "v1", 1, 256<<10)
	minio, shared := startShared(t)
	a := newInstance(t, up, shared, time.Hour)
	if err := a.pullImage("library/app:v1", nil, img); err != nil {
		t.Fatalf("A: %v", err)
	}
	a.waitUploads()

	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	good, err := io.ReadAll(must(layers[0].Compressed()))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 0xff
	layerObject := shared.BlobName(mustDigest(t, ld.String()))
	minio.Put(t, layerObject, bad)
	md, _ := img.Digest()
	rawManifest, _ := img.RawManifest()
	manifestObject := shared.BlobName(mustDigest(t, md.String()))
	minio.Put(t, manifestObject, rawManifest[:len(rawManifest)-1])
	up.Counters.Reset()

	b := newInstance(t, up, shared, time.Hour)
	manifestURL := "http://" + b.host + "/v2/library/app/manifests/" + md.String()
	resp, body, err := get(manifestURL)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, rawManifest) {
		t.Fatalf("manifest with a short copy in the bucket: %v, %v, %d bytes", status(resp), err, len(body))
	}
	if cs := resp.Header.Get("Cache-Status"); cs != resultMiss.CacheStatus() || up.Counters.ManifestGETs() != 1 {
		t.Errorf("manifest: Cache-Status %q and %d upstream GETs; want %q and 1", cs, up.Counters.ManifestGETs(), resultMiss.CacheStatus())
	}

	blobURL := "http://" + b.host + "/v2/library/app/blobs/" + ld.String()
	resp, body, err = get(blobURL)
	if err == nil && (resp.StatusCode != http.StatusOK || !bytes.Equal(body, good)) {
		t.Fatalf("blob with a wrong copy in the bucket ended cleanly: %v, %d bytes, right ones: %v", status(resp), len(body), bytes.Equal(body, good))
	}
	if err == nil {
		t.Logf("first request already served the upstream's bytes")
	}
	resp, body, err = get(blobURL)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, good) {
		t.Fatalf("blob, next request: %v, %v, right bytes: %v", status(resp), err, bytes.Equal(body, good))
	}
	if n := up.Counters.ObjectStoreGETsFor(ld.String()); n != 1 {
		t.Errorf("the upstream served the layer %d times, want 1", n)
	}

	// B's upstream fill replaced the bad copy: a third instance gets the
	// right bytes from the bucket, without the upstream.
	b.waitUploads()
	if got := minio.Get(t, layerObject); !bytes.Equal(got, good) {
		t.Fatalf("the bucket still holds a wrong copy of the layer")
	}
	up.Counters.Reset()
	c := newInstance(t, up, shared, time.Hour)
	resp, body, err = get("http://" + c.host + "/v2/library/app/blobs/" + ld.String())
	if err != nil || !bytes.Equal(body, good) || resp.Header.Get("Cache-Status") != resultShared.CacheStatus() || up.Counters.ObjectStoreGETs() != 0 {
		t.Errorf("C: %v, %v, right bytes %v, Cache-Status %q, %d upstream GETs", status(resp), err, bytes.Equal(body, good),
			resp.Header.Get("Cache-Status"), up.Counters.ObjectStoreGETs())
	}
}

// TestSharedTierNeverWidensAccess: private content instance A fetched with
// a client's credentials is served by instance B only to a client the
// upstream accepts for the repository.
func TestSharedTierNeverWidensAccess(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "alice", "alice-pw")
	up.AddUser("mallory", "mallory-pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 32<<10)
	_, shared := startShared(t)
	alice := &authn.Basic{Username: "alice", Password: "alice-pw"}

	a := newInstance(t, up, shared, time.Hour)
	if err := a.pullImage("team/secret:v1", alice, img); err != nil {
		t.Fatalf("A, alice: %v", err)
	}
	a.waitUploads()
	up.Counters.Reset()

	// Each refusal on an instance of its own, whose disk is empty.
	for _, who := range []authn.Authenticator{nil, &authn.Basic{Username: "mallory", Password: "mallory-pw"}} {
		b := newInstance(t, up, shared, time.Hour)
		if err := b.pullImage("team/secret:v1", who, img); err == nil {
			t.Errorf("B served the private image to %v", who)
		}
		if len(b.served) > 0 {
			t.Errorf("B answered %v with 200 to %v", b.served, who)
		}
	}
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	md, _ := img.Digest()
	for _, path := range []string{"/v2/team/secret/blobs/" + ld.String(), "/v2/team/secret/manifests/" + md.String()} {
		b := newInstance(t, up, shared, time.Hour)
		resp, body, err := get("http://" + b.host + path)
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("anonymous GET %s on B: %v, %v, %d bytes; want 401", path, status(resp), err, len(body))
		}
	}

	b := newInstance(t, up, shared, time.Hour)
	if err := b.pullImage("team/secret:v1", alice, img); err != nil {
		t.Fatalf("B, alice: %v", err)
	}
	if n, o := up.Counters.ManifestGETs(), up.Counters.ObjectStoreGETs(); n+o != 0 {
		t.Errorf("B made %d manifest GETs and %d blob fetches upstream; want none (HEADs only)", n, o)
	}
}

// TestSharedTierDown: with the shared tier's server stopped, pulls work
// from the upstream, and the condition is logged once, however often it
// is met.
func TestSharedTierDown(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "library/app", "v1", 2, 16<<10)
	idx := up.PushRandomIndex(t, "library/multi", "v1")
	minio, shared := startShared(t)
	core, logs := observer.New(zapcore.DebugLevel)
	// RetryAfter of a nanosecond: every request asks the remote again.
	in := newInstanceWith(t, up, blobcache.Options{Remote: shared, RetryAfter: time.Nanosecond}, time.Hour, zap.New(core))
	minio.Stop()

	if err := in.pullImage("library/app:v1", nil, img); err != nil {
		t.Fatalf("pull with the shared tier down: %v", err)
	}
	if err := in.pullIndex("library/multi:v1", idx); err != nil {
		t.Fatalf("index with the shared tier down: %v", err)
	}
	in.waitUploads()
	if got := in.statuses(); len(got) != 1 || len(got[resultMiss.CacheStatus()]) == 0 {
		t.Errorf("Cache-Status values: %v; want misses only", got)
	}
	warnings := logs.FilterMessageSnippet("shared tier unavailable").AllUntimed()
	if len(warnings) != 1 {
		t.Errorf("%d warnings about the shared tier, want 1: %v", len(warnings), warnings)
	}
	for _, e := range logs.AllUntimed() {
		if strings.Contains(fmt.Sprint(e.ContextMap()), testminio.SecretKey) {
			t.Errorf("the secret key is in the log: %v", e)
		}
	}
}

func get(url string) (*http.Response, []byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func status(resp *http.Response) string {
	if resp == nil {
		return "no response"
	}
	return resp.Status + " (" + resp.Header.Get("Cache-Status") + ")"
}

func must(rc io.ReadCloser, err error) io.ReadCloser {
	if err != nil {
		panic(err)
	}
	return rc
}

func mustDigest(t *testing.T, s string) digest.Digest {
	t.Helper()
	d, err := digest.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSharedTierKeepsConfiguredCredentialsToTheirSite: instance A has
// credentials for the upstream, B none; they share the tier. What A's
// credentials fetched reaches B through the bucket, with A's identity in
// its scopes: B's anonymous clients are refused, by tag and by digest,
// because B's own identity is.
func TestSharedTierKeepsConfiguredCredentialsToTheirSite(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.SetPrivate("team/secret", "bot", "bot-pw")
	img := up.PushRandomImage(t, "team/secret", "v1", 2, 32<<10)
	_, shared := startShared(t)

	a := newInstance(t, up, shared, time.Hour)
	upstream, _ := a.p.Router.ForHost(a.host)
	a.p.Upstream.Credentials = map[string]*tokenauth.Credentials{upstream.Name: {Username: "bot", Secret: "bot-pw"}}
	if err := a.pullImage("team/secret:v1", nil, img); err != nil {
		t.Fatalf("A, anonymous client with A's credentials: %v", err)
	}
	a.waitUploads()

	b := newInstance(t, up, shared, time.Hour)
	if err := b.pullImage("team/secret:v1", nil, img); err == nil {
		t.Error("B served the image A's credentials fetched to an anonymous client")
	}
	md, _ := img.Digest()
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	for _, path := range []string{"/v2/team/secret/blobs/" + ld.String(), "/v2/team/secret/manifests/" + md.String(), "/v2/team/secret/manifests/v1"} {
		resp, body, err := get("http://" + b.host + path)
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("anonymous GET %s on B: %v, %v, %d bytes; want 401", path, status(resp), err, len(body))
		}
	}
	if len(b.served) > 0 {
		t.Errorf("B answered %v with 200", b.served)
	}

	// An instance with the same account is the same identity: it is
	// served from the tier without fetching from the upstream.
	c := newInstance(t, up, shared, time.Hour)
	c.p.Upstream.Credentials = a.p.Upstream.Credentials
	up.Counters.Reset()
	if err := c.pullImage("team/secret:v1", nil, img); err != nil {
		t.Fatalf("C, with A's account: %v", err)
	}
	if n := up.Counters.ObjectStoreGETs(); n != 0 {
		t.Errorf("C fetched %d blobs upstream, want 0 (the shared tier has them)", n)
	}
}
