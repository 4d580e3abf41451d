package registry

import (
	"fmt"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

const (
	mtList   = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtV2     = "application/vnd.docker.distribution.manifest.v2+json"
	mtIndex  = "application/vnd.oci.image.index.v1+json"
	mtOCIMan = "application/vnd.oci.image.manifest.v1+json"
)

func TestNormaliseAccept(t *testing.T) {
	for _, c := range []struct {
		name   string
		values []string
		want   string
	}{
		{"none", nil, ""},
		{"sorted, lower case, de-duplicated", []string{mtV2 + ", " + strings.ToUpper(mtList), mtV2}, mtList + "," + mtV2},
		{"unknown types dropped", []string{"application/json, text/html, " + mtV2 + ", application/x-anything-12345"}, mtV2},
		{"parameters other than q dropped", []string{mtV2 + "; charset=utf-8; level=1"}, mtV2},
		{"non-zero q dropped", []string{mtList + ";q=0.5, " + mtV2 + ";q=1"}, mtList + "," + mtV2},
		{"q=0 refuses", []string{mtList + ";q=0, " + mtV2}, mtV2},
		{"q=0.000 refuses", []string{mtList + ";Q=0.000, " + mtV2}, mtV2},
		{"refusal wins over acceptance", []string{mtList, mtList + ";q=0", mtV2}, mtV2},
		{"refusal kept against a wildcard", []string{mtList + ";q=0, */*"}, "*/*," + mtList + ";q=0"},
		{"refused wildcard is nothing", []string{"*/*;q=0, " + mtV2}, mtV2},
		{"invalid q drops the range", []string{mtList + ";q=x, " + mtV2 + ";q=1.5, " + mtIndex + ";q=0.1234, " + mtOCIMan + ";q=2"}, ""},
		{"malformed ranges dropped", []string{"garbage;;;, " + mtV2 + ";q", mtIndex}, mtIndex},
	} {
		if got := normaliseAccept(c.values); got != c.want {
			t.Errorf("%s: normaliseAccept(%q) = %q, want %q", c.name, c.values, got, c.want)
		}
	}
}

func TestForwardHeadersDropMalformedValues(t *testing.T) {
	r := httptest.NewRequest("GET", "/v2/a/manifests/b", nil)
	r.Header.Add("Accept", mtIndex+", garbage;;;, "+mtV2+";q=0.5")
	r.Header.Add("Accept", "*/*;q=x")
	r.Header.Set("Authorization", "Bearer client-token")
	got := forwardHeaders(r, APIPath{Kind: KindManifest, Name: "a", Tag: "b"})
	want := mtV2 + "," + mtIndex
	if got.Get("Accept") != want {
		t.Errorf("Accept = %q, want %q", got.Get("Accept"), want)
	}
	if got.Get("Authorization") != "" {
		t.Error("the client's Authorization was forwarded")
	}
	for rng, keep := range map[string]bool{"bytes=0-99": true, "bytes=-500": true, "bytes=10-": true, "bytes=0-1, 5-9": true, "bytes=abc": false, "items=0-1": false, "bytes=0-1\r\nX: y": false} {
		r := httptest.NewRequest("GET", "/v2/a/blobs/sha256:"+strings.Repeat("a", 64), nil)
		r.Header["Range"] = []string{rng}
		got := forwardHeaders(r, APIPath{Kind: KindBlob})
		if (got.Get("Range") != "") != keep {
			t.Errorf("Range %q forwarded = %v, want %v", rng, got.Get("Range") != "", keep)
		}
	}
}

// getManifest GETs a manifest through the proxy with an Accept header.
func getManifest(t *testing.T, srv *httptest.Server, path, accept string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestQZeroDoesNotShareARecord: a client that refuses the list type with
// q=0 gets one platform's manifest from an upstream that honours q; a
// client that accepts lists must still get the list, whichever came first,
// and each record is keyed by exactly the Accept the upstream saw.
func TestQZeroDoesNotShareARecord(t *testing.T) {
	refusing := mtList + ";q=0, " + mtV2
	accepting := mtList + ", " + mtV2
	for _, order := range [][]string{{refusing, accepting}, {accepting, refusing}} {
		t.Run(fmt.Sprintf("first %q", order[0]), func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{RecordRequests: true})
			up.PushRandomIndex(t, "team/multi", "1")
			p, srv := newTestProxy(t, up, time.Hour)
			for _, accept := range order {
				resp := getManifest(t, srv, "/v2/team/multi/manifests/1", accept)
				want := mtList
				if accept == refusing {
					want = mtV2
				}
				if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != want {
					t.Errorf("Accept %q: %s, Content-Type %q; want %q", accept, status(resp), resp.Header.Get("Content-Type"), want)
				}
			}
			u, _ := p.Router.ForHost("any.example.test")
			base := u.String() + "\x00team/multi\x001"
			for _, rec := range up.Requests(testupstream.RegistryListener) {
				if !strings.Contains(rec.URI, "/manifests/") {
					continue
				}
				accept := rec.Header.Get("Accept")
				if _, ok := p.Cache.Store.Tag(base + "\x00" + accept); !ok {
					t.Errorf("the upstream saw %s %s with Accept %q, but no record is keyed by it", rec.Method, rec.URI, accept)
				}
			}
		})
	}
}

// TestAcceptVariantsMakeBoundedRecords: requests for one tag that differ
// only in meaningless Accept entries cost one upstream GET and make one
// tag record, not one each.
func TestAcceptVariantsMakeBoundedRecords(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	up.PushRandomImage(t, "team/app", "1", 1, 64)
	dir := t.TempDir()
	p, srv := newTestProxyWith(t, up, time.Hour, blobcache.Options{Dir: dir}, zap.NewNop())
	for i := 0; i < 300; i++ {
		accept := fmt.Sprintf("%s, %s, application/x-noise-%d;q=0.%d", mtV2, mtOCIMan, i, i%10)
		if resp := getManifest(t, srv, "/v2/team/app/manifests/1", accept); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %s", i, status(resp))
		}
	}
	if n := up.Counters.ManifestGETs(); n != 1 {
		t.Errorf("%d upstream manifest GETs, want 1", n)
	}
	if n := countFiles(t, filepath.Join(dir, "tags")); n != 1 {
		t.Errorf("%d tag records on disk, want 1", n)
	}
	u, _ := p.Router.ForHost("any.example.test")
	if n := len(p.Cache.accepts.others(u.String()+"\x00team/app\x001", "")); n != 1 {
		t.Errorf("%d Accept sets remembered for the tag, want 1", n)
	}
}

// countFiles counts the regular files under dir.
func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// FuzzNormaliseAccept: any Accept normalises without panic to a value
// made only of known media ranges, that parses as an Accept, that is its
// own normal form (so key and forwarded header agree however often it is
// applied) and whose size is bounded whatever the input.
func FuzzNormaliseAccept(f *testing.F) {
	for _, s := range []string{"", mtV2, mtList + ";q=0, */*", "a/b;q=0.5, " + mtIndex + ";Q=0.000", "garbage;;;", "*/*;q=x", mtV2 + ";charset=\"x\""} {
		f.Add(s, "")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		got := normaliseAccept([]string{a, b})
		if again := normaliseAccept([]string{got}); again != got {
			t.Fatalf("normaliseAccept(%q, %q) = %q, which normalises to %q", a, b, got, again)
		}
		max := 0
		for mt := range acceptRanges {
			max += len(mt) + len(";q=0,")
		}
		if len(got) > max {
			t.Fatalf("normal form of %d bytes", len(got))
		}
		if got == "" {
			return
		}
		for _, part := range strings.Split(got, ",") {
			mt, params, err := mime.ParseMediaType(part)
			if err != nil || !acceptRanges[mt] || len(params) > 1 || (len(params) == 1 && params["q"] != "0") {
				t.Fatalf("normal form %q has the range %q", got, part)
			}
		}
	})
}

// FuzzParseQValue checks parseQValue against RFC 9110's qvalue grammar.
func FuzzParseQValue(f *testing.F) {
	for _, s := range []string{"0", "1", "0.5", "0.000", "1.000", "1.001", ".5", "0.1234", "", "1e0", "-0", "0x0", "00"} {
		f.Add(s)
	}
	grammar := regexp.MustCompile(`^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$`)
	f.Fuzz(func(t *testing.T, q string) {
		zero, valid := parseQValue(q)
		if valid != grammar.MatchString(q) {
			t.Fatalf("parseQValue(%q) valid = %v, grammar says %v", q, valid, !valid)
		}
		if valid {
			v, err := strconv.ParseFloat(strings.TrimSuffix(q, "."), 64)
			if err != nil || zero != (v == 0) {
				t.Fatalf("parseQValue(%q) zero = %v, value %v (%v)", q, zero, v, err)
			}
		}
	})
}
