package registry

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// pushManyTags tags one image n times with long names, so that the tag
// list is about n*131 bytes of JSON.
func pushManyTags(t *testing.T, up *testupstream.Upstream, repo string, n int) {
	t.Helper()
	img := up.PushRandomImage(t, repo, "base", 1, 64)
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := up.PutRawManifest(repo, fmt.Sprintf("t%0127d", i), string(mt), raw); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBigTagListReachesTheClientWhole: a tag list bigger than the proxy
// keeps (Artifact Registry's and GCR's are) reaches the client complete and
// valid through the cache, whether the upstream sends it with a length or
// chunked; it is not kept, so an upstream failure afterwards is an error,
// never a cut list.
func TestBigTagListReachesTheClientWhole(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	const tags = 33000 // > maxListSize of JSON
	pushManyTags(t, up, "team/big", tags)
	_, srv := newTestProxy(t, up, time.Hour)
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			up.Faults.ChunkLists(chunked)
			defer up.Faults.ChunkLists(false)
			resp, body, err := get(srv.URL + "/v2/team/big/tags/list")
			if err != nil {
				t.Fatalf("reading the list: %v", err)
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s", status(resp))
			}
			if len(body) <= maxListSize {
				t.Fatalf("the list is %d bytes; the test needs more than %d", len(body), maxListSize)
			}
			var list struct {
				Name string   `json:"name"`
				Tags []string `json:"tags"`
			}
			if err := json.Unmarshal(body, &list); err != nil {
				t.Fatalf("the client got %d bytes of invalid JSON: %v", len(body), err)
			}
			if list.Name != "team/big" || len(list.Tags) != tags+1 {
				t.Errorf("list of %q with %d tags, want team/big with %d", list.Name, len(list.Tags), tags+1)
			}
		})
	}
	up.Faults.SetRegistryStatus(http.StatusServiceUnavailable)
	defer up.Faults.SetRegistryStatus(0)
	resp, body, err := get(srv.URL + "/v2/team/big/tags/list")
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("with the upstream failing: %s, %d bytes, %v; want 503 (a list too big to keep is not kept)", status(resp), len(body), err)
	}
}

// TestBigTagListCutUpstreamAbortsTheClient: when the upstream's list
// breaks off after what the proxy could keep, the client's connection
// breaks too: a clean end would pass a cut list for a complete one.
func TestBigTagListCutUpstreamAbortsTheClient(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	pushManyTags(t, up, "team/big", 33000)
	_, srv := newTestProxy(t, up, time.Hour)
	up.Faults.ChunkLists(true)
	up.Faults.CutListsAfter(maxListSize + 100<<10)
	resp, err := http.Get(srv.URL + "/v2/team/big/tags/list")
	if err != nil {
		return // broken before the header: fine too
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil {
		t.Errorf("the client read %d bytes (%s) and a clean end of a list the upstream cut", n, status(resp))
	}
}

// TestListRecordsStayBounded: every n= makes its own list answer, and so
// its own kept list and record; under max_size they are evicted like
// anything else instead of piling up.
func TestListRecordsStayBounded(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "1", 1, 64)
	dir := t.TempDir()
	const maxSize = 64 << 10
	p, srv := newTestProxyWith(t, up, time.Hour, blobcache.Options{Dir: dir, MaxSize: maxSize}, zap.NewNop())
	for n := 1; n <= 200; n++ {
		resp, _, err := get(fmt.Sprintf("%s/v2/team/app/tags/list?n=%d", srv.URL, n))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("n=%d: %s, %v", n, status(resp), err)
		}
	}
	if got := p.Cache.Store.Size(); got > maxSize {
		t.Errorf("the store counts %d bytes, max_size is %d", got, maxSize)
	}
	if files := countFiles(t, filepath.Join(dir, "tags")); files > maxSize/4096 {
		t.Errorf("%d list records on disk under a max_size of %d bytes", files, maxSize)
	}
}
