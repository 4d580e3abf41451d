package dockerproxy_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

func TestHitsNeverGoUpstreamAndSayHit(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 2, 100<<10)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	if err := e.pullImage(e.ref("docker.example.test", "team/app:1"), nil, img); err != nil {
		t.Fatal(err)
	}
	tok := anonymousToken(t, e, "docker.example.test", "team/app")
	// Tag records are per Accept (the upstream's answer depends on it):
	// warm the one these requests use.
	if resp, _ := e.get("GET", "/v2/team/app/manifests/1", tok, nil); resp.StatusCode != 200 {
		t.Fatalf("warming the tag: %d", resp.StatusCode)
	}
	before := up.Counters.RegistryRequests() + up.Counters.ObjectStoreRequests()
	md, _ := img.Digest()
	paths := []string{"/v2/team/app/manifests/1", "/v2/team/app/manifests/" + md.String()}
	for _, d := range layerDigests(t, img) {
		paths = append(paths, "/v2/team/app/blobs/"+d.String())
	}
	for _, p := range paths {
		for _, method := range []string{"GET", "HEAD"} {
			resp, _ := e.get(method, p, tok, nil)
			if resp.StatusCode != 200 || resp.Header.Get("Cache-Status") != "docker_proxy; hit" {
				t.Errorf("%s %s = %d Cache-Status %q", method, p, resp.StatusCode, resp.Header.Get("Cache-Status"))
			}
		}
	}
	// Conditional and Range requests on hits.
	etag := `"` + layerDigests(t, img)[0].String() + `"`
	resp, _ := e.get("GET", "/v2/team/app/blobs/"+layerDigests(t, img)[0].String(), tok, http.Header{"If-None-Match": {etag}})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match on a hit = %d, want 304", resp.StatusCode)
	}
	resp, body := e.get("GET", "/v2/team/app/blobs/"+layerDigests(t, img)[0].String(), tok, http.Header{"Range": {"bytes=0-9"}})
	if resp.StatusCode != http.StatusPartialContent || len(body) != 10 {
		t.Errorf("Range on a hit = %d, %d bytes", resp.StatusCode, len(body))
	}
	if n := up.Counters.RegistryRequests() + up.Counters.ObjectStoreRequests() - before; n != 0 {
		t.Errorf("hits made %d upstream requests", n)
	}
}

func TestFiftyConcurrentColdPullsFetchOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB x 50")
	}
	up := testupstream.Start(t, testupstream.Options{})
	const size = 256 << 20
	_, blob := up.PushGeneratedImage(t, "team/big", "1", 7, size)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	tok := anonymousToken(t, e, "docker.example.test", "team/big")
	path := "/v2/team/big/blobs/" + blob.Digest.String()

	// Hold the upstream body after 64 MiB so that every client, including
	// a late one and a Range request, joins a fill in progress.
	hold := up.Faults.HoldBlobs(64 << 20)
	type result struct {
		sum    string
		n      int64
		status string
		err    error
	}
	results := make(chan result, 52)
	var responded atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sum, n, st, err := e.readBlobCounting(path, tok, nil, &responded)
			results <- result{sum, n, st, err}
		}()
	}
	<-hold.Reached()
	// A client that joins halfway, and a Range request on the fill.
	wg.Add(2)
	go func() {
		defer wg.Done()
		sum, n, st, err := e.readBlobCounting(path, tok, nil, &responded)
		results <- result{sum, n, st, err}
	}()
	var rangeBody []byte
	var rangeStatus string
	var rangeResponded atomic.Bool
	go func() {
		defer wg.Done()
		req, _ := http.NewRequest("GET", e.url("docker.example.test", path), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		// To the end: a range that ends before it holds its last byte
		// back until the fill is verified, so its response could not
		// be seen while the fill is in progress.
		req.Header.Set("Range", "bytes=100000000-")
		resp, err := (&http.Client{Transport: e.transport.Clone()}).Do(req)
		if err == nil {
			rangeResponded.Store(true)
			rangeStatus = resp.Header.Get("Cache-Status")
			rangeBody = make([]byte, 100)
			var rest int64
			if _, err = io.ReadFull(resp.Body, rangeBody); err == nil {
				rest, err = io.Copy(io.Discard, resp.Body)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusPartialContent {
				err = fmt.Errorf("range status %d", resp.StatusCode)
			} else if err == nil && 100+rest != size-100000000 {
				err = fmt.Errorf("range of %d bytes, want %d", 100+rest, size-100000000)
			}
		}
		results <- result{status: "range", err: err}
	}()
	// Every client has its response, so each one has joined the held fill
	// (or leads it). The Range request waits for bytes past the hold
	// point: the upstream goes on to a second hold point past the range's
	// start, where the Range request has its response, from the fill in
	// progress.
	waitUntil(t, "every client's response", func() bool { return responded.Load() == 51 })
	hold = up.Faults.HoldBlobs(128 << 20) // releases the first hold
	waitUntil(t, "the Range request's response", rangeResponded.Load)
	hold.Release()
	wg.Wait()
	close(results)
	joined := 0
	for r := range results {
		if r.err != nil {
			t.Errorf("client failed: %v", r.err)
			continue
		}
		if r.status == "range" {
			continue
		}
		if r.sum != blob.Digest.String() || r.n != size {
			t.Errorf("client got %d bytes hashing to %s", r.n, r.sum)
		}
		if strings.Contains(r.status, "collapsed") {
			joined++
		}
	}
	want := make([]byte, 100)
	if _, err := blob.Open().ReadAt(want, 100000000); err != nil {
		t.Fatal(err)
	}
	if string(rangeBody) != string(want) {
		t.Error("Range on a fill in progress returned the wrong bytes")
	}
	if !strings.Contains(rangeStatus, "collapsed") {
		t.Errorf("Range request's Cache-Status %q, want it joined the fill (collapsed)", rangeStatus)
	}
	if joined != 50 {
		t.Errorf("%d clients joined the fill, want 50: all but the one that started it", joined)
	}
	if got := up.Counters.BlobBytes(); got != size {
		t.Errorf("upstream sent %d blob bytes for a %d-byte blob (%.2fx)", got, size, float64(got)/size)
	}
	if n := up.Counters.ObjectStoreGETsFor(blob.Digest.String()); n != 1 {
		t.Errorf("%d upstream fetches of the blob, want 1", n)
	}
}

func TestBrokenUpstreamBlobsFailVisiblyAndAreNotKept(t *testing.T) {
	for _, fault := range []string{"cut", "corrupt"} {
		t.Run(fault, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{})
			const size = 4 << 20
			_, blob := up.PushGeneratedImage(t, "team/big", "1", 3, size)
			e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
			tok := anonymousToken(t, e, "docker.example.test", "team/big")
			path := "/v2/team/big/blobs/" + blob.Digest.String()
			switch fault {
			case "cut":
				up.Faults.CutBlobsAfter(size / 2)
			case "corrupt":
				up.Faults.CorruptBlobs(true)
			}
			hold := up.Faults.HoldBlobs(1 << 20)
			var wg sync.WaitGroup
			var responded atomic.Int64
			errs := make(chan error, 5)
			for i := 0; i < 5; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sum, n, _, err := e.readBlobCounting(path, tok, nil, &responded)
					if err == nil {
						err = fmt.Errorf("transfer ended cleanly with %d bytes (sha %s)", n, sum)
					} else {
						err = nil
					}
					errs <- err
				}()
			}
			// Every client has its response: each one leads or joined
			// the held fill when the fault strikes.
			waitUntil(t, "every client's response", func() bool { return responded.Load() == 5 })
			hold.Release()
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Errorf("a client did not see the failure: %v", err)
				}
			}
			if n := up.Counters.ObjectStoreGETsFor(blob.Digest.String()); n != 1 {
				t.Errorf("%d upstream fetches for 5 clients, want 1", n)
			}
			up.Faults.Reset()
			if files := filesUnder(t, filepath.Join(e.dataDirParent(), "cache")); len(files) != 0 {
				t.Errorf("cache holds files after a failed fill: %v", files)
			}
			sum, n, status, err := e.readBlob(path, tok, nil)
			if err != nil || sum != blob.Digest.String() || n != size {
				t.Fatalf("next pull: %v, %d bytes, %s", err, n, sum)
			}
			if !strings.Contains(status, "fwd=miss") {
				t.Errorf("next pull Cache-Status %q, want a miss", status)
			}
		})
	}
}

func TestFillGoesOnWhenFirstClientLeaves(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	const size = 8 << 20
	_, blob := up.PushGeneratedImage(t, "team/big", "1", 11, size)
	// Caddy's access log says when the proxy is done with a request.
	accessLog := filepath.Join(t.TempDir(), "access.log")
	e := startProxy(t, up, strings.Replace(cachedBlock("tag_ttl 5m"), "http://:{PORT} {",
		"http://:{PORT} {\n\tlog {\n\t\toutput file "+accessLog+"\n\t}", 1))
	tok := anonymousToken(t, e, "docker.example.test", "team/big")
	path := "/v2/team/big/blobs/" + blob.Digest.String()
	hold := up.Faults.HoldBlobs(1 << 20)

	// The first client starts the fill and reads a little.
	req, _ := http.NewRequest("GET", e.url("docker.example.test", path), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	first, err := (&http.Client{Transport: e.transport.Clone()}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	<-hold.Reached()
	// A second client joins the fill in progress: it has its response
	// (so its place in the fill) before the first one leaves.
	done := make(chan error, 1)
	var responded atomic.Int64
	var joinedStatus string
	go func() {
		sum, n, status, err := e.readBlobCounting(path, tok, nil, &responded)
		if err == nil && (sum != blob.Digest.String() || n != size) {
			err = fmt.Errorf("got %d bytes hashing to %s", n, sum)
		}
		joinedStatus = status
		done <- err
	}()
	waitUntil(t, "the second client's response", func() bool { return responded.Load() == 1 })
	if _, err := io.ReadFull(first.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	first.Body.Close() // the first client leaves mid-transfer
	// The upstream goes on only once the proxy is done with the first
	// client's request.
	waitUntil(t, "the first client's request to end", func() bool {
		b, _ := os.ReadFile(accessLog)
		return strings.Contains(string(b), path)
	})
	hold.Release()
	if err := <-done; err != nil {
		t.Fatalf("the joined client failed after the first one left: %v", err)
	}
	if !strings.Contains(joinedStatus, "collapsed") {
		t.Errorf("second client's Cache-Status %q, want it joined the fill (collapsed)", joinedStatus)
	}
	if n := up.Counters.ObjectStoreGETsFor(blob.Digest.String()); n != 1 {
		t.Errorf("%d upstream fetches, want 1", n)
	}
	// And the entry was kept.
	_, _, status, err := e.readBlob(path, tok, nil)
	if err != nil || status != "docker_proxy; hit" {
		t.Errorf("after the fill: %v, Cache-Status %q", err, status)
	}
}

func TestConcurrentColdPullsByDigestCostOneGET(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	img := up.PushRandomImage(t, "team/app", "1", 1, 1024)
	e := startProxy(t, up, cachedBlock("tag_ttl 5m"))
	// containerd's way: HEAD the tag for its digest, then GET by digest.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			desc, err := remote.Head(e.ref("docker.example.test", "team/app:1"), e.remoteOptions(nil)...)
			if err != nil {
				errs <- err
				return
			}
			got, err := remote.Image(e.ref("docker.example.test", "team/app@"+desc.Digest.String()), e.remoteOptions(nil)...)
			if err == nil {
				err = testupstream.SameImage(got, img)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := up.Counters.ManifestGETs(); n != 1 {
		t.Errorf("20 concurrent cold pulls by digest: %d manifest GETs upstream, want 1", n)
	}
}

// TestBodyFailureAbortsClientConnection: an upstream blob body that breaks
// off reaches the client as a broken response, never as a clean short one.
// The upstream sends it chunked, without Content-Length, so nothing but the
// proxy's own abort can tell the client (a response with a length that
// falls short is broken off by net/http anyway).
func TestBodyFailureAbortsClientConnection(t *testing.T) {
	for _, c := range []struct{ name, block string }{
		{"cache off", domainBlock},
		{"cache on", cachedBlock("")},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{})
			img := up.PushRandomImage(t, "team/app", "1", 1, 1<<20)
			e := startProxy(t, up, c.block)
			layers, _ := img.Layers()
			ld, _ := layers[0].Digest()
			tok := anonymousToken(t, e, "docker.example.test", "team/app")
			up.Faults.ChunkBlobs(true)
			up.Faults.CutBlobsAfter(300 << 10)
			req, _ := http.NewRequest("GET", e.url("docker.example.test", "/v2/team/app/blobs/"+ld.String()), nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := (&http.Client{Transport: e.transport}).Do(req)
			if err == nil {
				// Headers went out before the cut: the body must fail.
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("status %d, want 200 (the upstream's) or no response at all", resp.StatusCode)
				}
				if c.name == "cache off" && resp.ContentLength != -1 {
					t.Errorf("length %d: want none, as the upstream sent it", resp.ContentLength)
				}
				if err == nil {
					t.Errorf("a cut blob ended cleanly after %d bytes", n)
				}
			}
			// else: the cut came before any byte reached the client, whose
			// connection was closed without a response: also never clean.
			if up.Counters.ObjectStoreGETs() != 1 {
				t.Errorf("%d object store GETs, want 1", up.Counters.ObjectStoreGETs())
			}
		})
	}
}
