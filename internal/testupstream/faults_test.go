package testupstream

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// blobFixture stores a generated image and returns a fresh signed object
// store URL for its blob and the blob's bytes.
func blobFixture(t *testing.T, u *Upstream, size int64) (*GeneratedBlob, string, []byte) {
	t.Helper()
	_, g := u.PushGeneratedImage(t, "fault/blob", "latest", 42, size)
	full := make([]byte, size)
	if _, err := io.ReadFull(g.Open(), full); err != nil {
		t.Fatal(err)
	}
	return g, u.SignedBlobURL(g.Digest, time.Now().Add(time.Hour)), full
}

func TestFaultCut(t *testing.T) {
	u := Start(t, Options{})
	_, loc, full := blobFixture(t, u, 200_000)
	for _, n := range []int64{0, 100, 70_000} {
		u.Faults.CutBlobsAfter(n)
		resp, err := http.Get(loc)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("cut %d: err %v, want unexpected EOF", n, err)
		}
		if int64(len(got)) != n || !bytes.Equal(got, full[:n]) {
			t.Errorf("cut %d: got %d bytes", n, len(got))
		}
	}
	u.Faults.CutBlobsAfter(-1)
	resp, body := do(t, "GET", loc, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, full) {
		t.Errorf("after cut off: %d %d bytes", resp.StatusCode, len(body))
	}
}

func TestFaultChunked(t *testing.T) {
	u := Start(t, Options{})
	_, loc, full := blobFixture(t, u, 200_000)
	u.Faults.ChunkBlobs(true)
	resp, body := do(t, "GET", loc, nil)
	if resp.StatusCode != 200 || resp.ContentLength != -1 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || !bytes.Equal(body, full) {
		t.Errorf("chunked: %d, length %d, coding %v, %d bytes", resp.StatusCode, resp.ContentLength, resp.TransferEncoding, len(body))
	}
	// Even a body that fits in net/http's buffer goes without a length.
	_, small, _ := blobFixture(t, u, 100)
	if resp, _ := do(t, "GET", small, nil); resp.ContentLength != -1 {
		t.Errorf("a small chunked blob came with Content-Length %d", resp.ContentLength)
	}

	u.Faults.CutBlobsAfter(70_000)
	resp, err := http.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ContentLength != -1 || !errors.Is(err, io.ErrUnexpectedEOF) || !bytes.Equal(got, full[:70_000]) {
		t.Errorf("chunked and cut: length %d, err %v, %d bytes", resp.ContentLength, err, len(got))
	}

	if err := u.Faults.Reset(); err != nil {
		t.Fatal(err)
	}
	if resp, body := do(t, "GET", loc, nil); resp.ContentLength != int64(len(full)) || !bytes.Equal(body, full) {
		t.Errorf("after Reset: length %d, %d bytes", resp.ContentLength, len(body))
	}
}

func TestFaultCorrupt(t *testing.T) {
	u := Start(t, Options{})
	g, loc, full := blobFixture(t, u, 50_000)
	u.Faults.CorruptBlobs(true)
	_, body := do(t, "GET", loc, nil)
	if len(body) != len(full) || !bytes.Equal(body[:len(full)-1], full[:len(full)-1]) ||
		body[len(body)-1] == full[len(full)-1] || sha(body) == g.Digest.String() {
		t.Fatal("corrupt: want same length, only the last byte different")
	}
	_, body = do(t, "GET", loc, map[string]string{"Range": "bytes=49990-"})
	if !bytes.Equal(body[:9], full[49990:49999]) || body[9] == full[49999] {
		t.Error("corrupt Range with last byte")
	}
	u.Faults.CorruptBlobs(false)
	if _, body = do(t, "GET", loc, nil); sha(body) != g.Digest.String() {
		t.Error("still corrupt after switching off")
	}
}

func TestFaultStatus(t *testing.T) {
	u := Start(t, Options{})
	_, loc, _ := blobFixture(t, u, 10)
	u.Faults.SetRegistryStatus(503)
	resp, body := do(t, "GET", u.URL+"/v2/", nil)
	if resp.StatusCode != 503 || !strings.Contains(string(body), `"errors"`) {
		t.Errorf("registry 503: %d %s", resp.StatusCode, body)
	}
	u.Faults.SetRegistryStatus(0)
	if resp, _ := do(t, "GET", u.URL+"/v2/", nil); resp.StatusCode != 401 {
		t.Errorf("registry after off: %d", resp.StatusCode)
	}
	u.Faults.SetObjectStoreStatus(500)
	if resp, _ := do(t, "GET", loc, nil); resp.StatusCode != 500 {
		t.Errorf("object store 500: %d", resp.StatusCode)
	}
	u.Faults.SetObjectStoreStatus(0)
	if resp, _ := do(t, "GET", loc, nil); resp.StatusCode != 200 {
		t.Errorf("object store after off: %d", resp.StatusCode)
	}
}

func TestFaultRateLimit(t *testing.T) {
	u := Start(t, Options{RateLimit: 2, EnforceRateLimit: true})
	u.PushRandomImage(t, "rl/img", "latest", 1, 10)
	tok := token(t, u, "", "", "repository:rl/img:pull")
	m := u.URL + "/v2/rl/img/manifests/latest"

	u.Faults.RateLimit(true, 90*time.Second)
	resp, body := do(t, "GET", m, bearer(tok))
	if resp.StatusCode != 429 || resp.Header.Get("ratelimit-remaining") != "0;w=21600" ||
		resp.Header.Get("Retry-After") != "90" || !strings.Contains(string(body), "TOOMANYREQUESTS") {
		t.Errorf("429 switch: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	if resp, _ := do(t, "HEAD", m, bearer(tok)); resp.StatusCode != 200 {
		t.Errorf("HEAD during 429: %d", resp.StatusCode)
	}
	u.Faults.RateLimit(false, 0)
	u.Counters.Reset()
	// Enforced limit of 2: the third GET is refused.
	var codes []int
	for range 3 {
		resp, _ := do(t, "GET", m, bearer(tok))
		codes = append(codes, resp.StatusCode)
	}
	if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 {
		t.Errorf("enforced limit: %v", codes)
	}
}

func TestFaultDown(t *testing.T) {
	u := Start(t, Options{})
	_, loc, _ := blobFixture(t, u, 10)
	if err := u.Faults.SetDown(true); err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{u.URL + "/v2/", u.RealmURL + "/token"} {
		_, err := http.Get(url)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s while down: %v, want connection refused", url, err)
		}
	}
	if resp, _ := do(t, "GET", loc, nil); resp.StatusCode != 200 {
		t.Errorf("object store while down: %d", resp.StatusCode)
	}
	if err := u.Faults.SetDown(false); err != nil {
		t.Fatal(err)
	}
	if resp, _ := do(t, "GET", u.URL+"/v2/", nil); resp.StatusCode != 401 {
		t.Errorf("registry back up: %d", resp.StatusCode)
	}
	token(t, u, "", "", "repository:fault/blob:pull")
}

func TestFaultSlow(t *testing.T) {
	u := Start(t, Options{})
	g, loc, _ := blobFixture(t, u, 20_000)
	u.Faults.SlowBlobs(1 << 20)
	if _, body := do(t, "GET", loc, nil); sha(body) != g.Digest.String() {
		t.Error("slow body wrong")
	}
}

func TestFaultHold(t *testing.T) {
	u := Start(t, Options{})
	g, loc, full := blobFixture(t, u, 100_000)
	h := u.Faults.HoldBlobs(30_000)
	resp, err := http.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 30_000)
	if _, err := io.ReadFull(resp.Body, first); err != nil || !bytes.Equal(first, full[:30_000]) {
		t.Fatalf("before hold point: %v", err)
	}
	waitFor(t, func() bool {
		select {
		case <-h.Reached():
			return true
		default:
			return false
		}
	})
	if h.Paused() != 1 {
		t.Errorf("Paused = %d", h.Paused())
	}
	// A second reader holds too, at the same point.
	var wg sync.WaitGroup
	var second []byte
	wg.Go(func() {
		resp, err := http.Get(loc)
		if err != nil {
			t.Error(err)
			return
		}
		defer resp.Body.Close()
		second, _ = io.ReadAll(resp.Body)
	})
	waitFor(t, func() bool { return h.Paused() == 2 })
	if u.Counters.BlobBytes() != 60_000 {
		t.Errorf("BlobBytes while held = %d", u.Counters.BlobBytes())
	}
	h.Release()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || sha(append(first, rest...)) != g.Digest.String() {
		t.Errorf("after release: %v", err)
	}
	wg.Wait()
	if sha(second) != g.Digest.String() {
		t.Error("second reader wrong")
	}
	// Released: new bodies are not held.
	if _, body := do(t, "GET", loc, nil); len(body) != 100_000 {
		t.Error("held after release")
	}
}

// TestFaultsConcurrentFlips flips every switch while bodies stream, from
// before the first request until the last body is read; run with -race it
// checks the switches are safe to use concurrently.
func TestFaultsConcurrentFlips(t *testing.T) {
	u := Start(t, Options{})
	_, loc, _ := blobFixture(t, u, 300_000)
	stop := make(chan struct{})
	var flipper sync.WaitGroup
	flipper.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			u.Faults.CorruptBlobs(i%2 == 0)
			u.Faults.CutBlobsAfter(int64(i%3) * 100_000)
			u.Faults.SlowBlobs(int64(i%2) << 30)
			u.Faults.SetObjectStoreStatus(0)
			runtime.Gosched()
		}
	})
	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			for range 5 {
				resp, err := http.Get(loc)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
	readers.Wait()
	close(stop)
	flipper.Wait()
	if err := u.Faults.Reset(); err != nil {
		t.Fatal(err)
	}
}

func TestGeneratedBlob(t *testing.T) {
	const size = 3<<20 + 13
	g, err := NewGeneratedBlob(1, size)
	if err != nil {
		t.Fatal(err)
	}
	full, err := io.ReadAll(g.Open())
	if err != nil || len(full) != size {
		t.Fatalf("ReadAll: %d %v", len(full), err)
	}
	if sha(full) != g.Digest.String() {
		t.Fatal("digest mismatch")
	}
	again, _ := NewGeneratedBlob(1, size)
	other, _ := NewGeneratedBlob(2, size)
	if again.Digest != g.Digest || other.Digest == g.Digest {
		t.Fatal("generation not deterministic per seed")
	}
	rng := rand.New(rand.NewSource(3))
	r := g.Open()
	for range 50 {
		off := rng.Int63n(size)
		n := rng.Intn(100_000)
		buf := make([]byte, n)
		got, err := r.ReadAt(buf, off)
		want := full[off:min(off+int64(n), size)]
		if got != len(want) || !bytes.Equal(buf[:got], want) || (got < n && err != io.EOF) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", n, off, got, err)
		}
		if _, err := r.Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		got2, _ := io.ReadFull(r, buf)
		if !bytes.Equal(buf[:got2], want) {
			t.Fatalf("Seek(%d)+Read mismatch", off)
		}
	}
	if _, err := g.Open().Seek(-1, io.SeekStart); err == nil {
		t.Error("negative seek accepted")
	}
}

func TestGeneratedImagePull(t *testing.T) {
	u, opts := start(t)
	img, g := u.PushGeneratedImage(t, "gen/img", "big", 9, 1<<20)
	got, err := remoteImage(t, u, "gen/img:big", opts)
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := img.Digest()
	gd, _ := got.Digest()
	if wd != gd {
		t.Fatalf("digest %s, want %s", gd, wd)
	}
	l, err := got.LayerByDigest(g.Digest)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	body, err := io.ReadAll(rc)
	if err != nil || sha(body) != g.Digest.String() {
		t.Fatalf("layer: %v", err)
	}
	// Range through the object store, via the registry's redirect.
	tok := token(t, u, "", "", "repository:gen/img:pull")
	resp, _ := do(t, "GET", u.URL+"/v2/gen/img/blobs/"+g.Digest.String(), bearer(tok))
	resp, part := do(t, "GET", resp.Header.Get("Location"), map[string]string{"Range": "bytes=-100"})
	if resp.StatusCode != 206 || !bytes.Equal(part, body[len(body)-100:]) {
		t.Errorf("suffix range: %d", resp.StatusCode)
	}
	// Storing another image that shares the blob links it without reading.
	u.PushImage(t, "gen/other", "x", img)
	if _, ok := u.blobs.getLinked("gen/other", g.Digest); !ok {
		t.Error("shared blob not linked")
	}
	var _ v1.Layer = g.Layer()
}

// waitFor polls cond; the bound only keeps a broken test from hanging, it
// is not a timing assertion.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkGeneratedBlob measures how fast generated bytes are produced
// (what NewGeneratedBlob's digest pass and the object store pay).
func BenchmarkGeneratedBlob(b *testing.B) {
	g, err := NewGeneratedBlob(1, 64<<20)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(g.Size)
	for b.Loop() {
		if _, err := io.CopyBuffer(io.Discard, g.Open(), buf); err != nil {
			b.Fatal(err)
		}
	}
}
