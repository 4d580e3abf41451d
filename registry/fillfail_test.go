package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestFillFailureLogsOnceAndCounts: an upstream that cuts a blob short,
// sends wrong bytes or stalls aborts every client of the fill (as before)
// and now leaves one warning per failed fill, not one per client, naming
// the upstream and the digest but never the signed URL the bytes came
// from, and one count under its reason.
func TestFillFailureLogsOnceAndCounts(t *testing.T) {
	const size = 2 << 20
	const clients = 4
	for _, tc := range []struct{ fault, reason string }{
		{"cut", "short_body"},
		{"corrupt", "digest_mismatch"},
		{"stall", "stalled"},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{})
			_, blob := up.PushGeneratedImage(t, "team/big", "1", 7, size)
			core, logs := observer.New(zapcore.WarnLevel)
			// A short stall limit: the stall case must end within the
			// test; the others never come near it.
			opts := blobcache.Options{StallTimeout: 3 * time.Second}
			p, srv := newTestProxyWith(t, up, time.Minute, opts, zap.New(core))
			var mu sync.Mutex
			counts := map[string]int{}
			// The proxy calls OnFillFailure just after it logged the
			// failure, from the fill's own goroutine.
			failed := make(chan struct{}, 1)
			p.OnFillFailure = func(_, reason string) {
				mu.Lock()
				counts[reason]++
				mu.Unlock()
				select {
				case failed <- struct{}{}:
				default:
				}
			}

			// Every client holds the fill's first bytes before the fault
			// strikes: the hold keeps the upstream body at 512 KiB until
			// all of them have their response headers (so they joined).
			hold := up.Faults.HoldBlobs(512 << 10)
			switch tc.fault {
			case "cut":
				up.Faults.CutBlobsAfter(size / 2)
			case "corrupt":
				up.Faults.CorruptBlobs(true)
			}
			client := blobClient(t, srv.URL, "team/big")
			url := srv.URL + "/v2/team/big/blobs/" + blob.Digest.String()
			bodies := make([]io.ReadCloser, clients)
			statuses := make([]string, clients)
			for i := range bodies {
				resp, err := client.Get(url)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("client %d: %s", i, resp.Status)
				}
				bodies[i], statuses[i] = resp.Body, resp.Header.Get("Cache-Status")
				if i == 0 {
					<-hold.Reached()
				}
			}
			if tc.fault != "stall" {
				hold.Release() // a stall keeps holding: the proxy gives up on it
			}
			var wg sync.WaitGroup
			errs := make([]error, clients)
			for i, b := range bodies {
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer b.Close()
					n, err := io.Copy(io.Discard, b)
					if err == nil {
						err = fmt.Errorf("ended cleanly after %d bytes", n)
					} else {
						err = nil
					}
					errs[i] = err
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("client %d (%s) did not see the failure: %v", i, statuses[i], err)
				}
			}
			joined := 0
			for _, s := range statuses {
				if strings.Contains(s, "collapsed") {
					joined++
				}
			}
			if joined != clients-1 {
				t.Fatalf("%d clients joined the fill, want %d (Cache-Status %q)", joined, clients-1, statuses)
			}
			if n := up.Counters.ObjectStoreGETsFor(blob.Digest.String()); n != 1 {
				t.Fatalf("%d upstream fetches, want one fill", n)
			}

			// The warning comes from the fill's own goroutine, which may
			// end just after the clients saw the failure: wait for it.
			select {
			case <-failed:
			case <-time.After(time.Minute):
				t.Fatal("the failed fill was never reported")
			}
			warns := logs.FilterMessageSnippet("blob fill failed").All()
			if len(warns) != 1 {
				t.Fatalf("%d fill warnings, want exactly 1: %v", len(warns), warns)
			}
			w := warns[0]
			if w.Level != zapcore.WarnLevel {
				t.Errorf("logged at %s, want warn", w.Level)
			}
			fields := w.ContextMap()
			if fields["upstream"] != p.Router.def.Name || fields["digest"] != blob.Digest.String() || fields["reason"] != tc.reason {
				t.Errorf("fields %v, want upstream %q, digest %s, reason %s", fields, p.Router.def.Name, blob.Digest, tc.reason)
			}
			objectHost := strings.TrimPrefix(up.ObjectStoreURL, "http://")
			if line := fmt.Sprint(w.Message, fields); strings.Contains(line, objectHost) || strings.Contains(line, "?") {
				t.Errorf("the warning shows the object store's (signed) URL: %s", line)
			}
			// Nothing else at warn level: no line per client.
			if all := logs.All(); len(all) != 1 {
				t.Errorf("%d warnings in all, want 1: %v", len(all), all)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(counts) != 1 || counts[tc.reason] != 1 {
				t.Errorf("counted %v, want %s: 1", counts, tc.reason)
			}
		})
	}
}

// blobClient is an HTTP client that gets pull tokens for repo from the
// proxy at base, as a registry client library does.
func blobClient(t *testing.T, base, repo string) *http.Client {
	t.Helper()
	r, err := name.NewRepository(strings.TrimPrefix(base, "http://")+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := transport.NewWithContext(context.Background(), r.Registry, authn.Anonymous, http.DefaultTransport, []string{r.Scope(transport.PullScope)})
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: tr}
}
