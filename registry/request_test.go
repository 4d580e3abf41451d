package registry

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

const (
	testSHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	testSHA512 = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
	testSHA384 = "sha384:38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b"
)

// isDistributionName is an oracle for the distribution spec's repository
// name grammar, written without regular expressions so that it checks
// ParsePath's regexp independently:
//
//	name      := component ( '/' component )*
//	component := alnum+ ( separator alnum+ )*
//	separator := '.' | '_' | '__' | '-'+
//	alnum     := [a-z0-9]
//
// and at most 255 characters in all.
func isDistributionName(name string) bool {
	if name == "" || len(name) > 255 {
		return false
	}
	for _, comp := range strings.Split(name, "/") {
		if !isDistributionComponent(comp) {
			return false
		}
	}
	return true
}

func isDistributionComponent(c string) bool {
	alnum := func(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }
	i := 0
	for {
		// alnum+
		start := i
		for i < len(c) && alnum(c[i]) {
			i++
		}
		if i == start {
			return false
		}
		if i == len(c) {
			return true
		}
		// separator
		switch {
		case c[i] == '.':
			i++
		case c[i] == '_':
			i++
			if i < len(c) && c[i] == '_' {
				i++
			}
		case c[i] == '-':
			for i < len(c) && c[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

func TestIsDistributionNameOracle(t *testing.T) {
	for name, want := range map[string]bool{
		"a": true, "library/alpine": true, "a.b_c__d---e/f": true, "0/1/2": true,
		"": false, "A": false, "a__": false, "a___b": false, "a._b": false, "_a": false,
		"a/": false, "/a": false, "a//b": false, "a-": false, "a..b": false,
	} {
		if got := isDistributionName(name); got != want {
			t.Errorf("isDistributionName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestParsePath(t *testing.T) {
	d := digest.Digest(testSHA256)
	tests := []struct {
		method, path string
		want         APIPath
		status       int // 0: accepted
		code         string
	}{
		// Base and the token endpoint.
		{"GET", "/v2/", APIPath{Kind: KindBase}, 0, ""},
		{"GET", "/v2", APIPath{Kind: KindBase}, 0, ""},
		{"HEAD", "/v2/", APIPath{Kind: KindBase}, 0, ""},
		{"GET", "/v2/auth", APIPath{Kind: KindAuth}, 0, ""},
		{"GET", "/v2/auth/", APIPath{Kind: KindAuth}, 0, ""},
		{"POST", "/v2/auth", APIPath{Kind: KindAuth}, 0, ""},

		// Manifests by tag and by digest.
		{"GET", "/v2/library/alpine/manifests/latest", APIPath{Kind: KindManifest, Name: "library/alpine", Tag: "latest"}, 0, ""},
		{"HEAD", "/v2/library/alpine/manifests/3.20", APIPath{Kind: KindManifest, Name: "library/alpine", Tag: "3.20"}, 0, ""},
		{"GET", "/v2/busybox/manifests/1.36.1-musl", APIPath{Kind: KindManifest, Name: "busybox", Tag: "1.36.1-musl"}, 0, ""},
		{"GET", "/v2/library/alpine/manifests/" + testSHA256, APIPath{Kind: KindManifest, Name: "library/alpine", Digest: d}, 0, ""},
		{"GET", "/v2/a/manifests/" + testSHA512, APIPath{Kind: KindManifest, Name: "a", Digest: testSHA512}, 0, ""},
		{"GET", "/v2/a/manifests/" + testSHA384, APIPath{Kind: KindManifest, Name: "a", Digest: testSHA384}, 0, ""},
		{"GET", "/v2/a/manifests/_under", APIPath{Kind: KindManifest, Name: "a", Tag: "_under"}, 0, ""},
		{"GET", "/v2/a/manifests/UPPER.case-Tag_1", APIPath{Kind: KindManifest, Name: "a", Tag: "UPPER.case-Tag_1"}, 0, ""},

		// Blobs, tags, referrers.
		{"GET", "/v2/library/alpine/blobs/" + testSHA256, APIPath{Kind: KindBlob, Name: "library/alpine", Digest: d}, 0, ""},
		{"HEAD", "/v2/library/alpine/blobs/" + testSHA256, APIPath{Kind: KindBlob, Name: "library/alpine", Digest: d}, 0, ""},
		{"GET", "/v2/library/alpine/tags/list", APIPath{Kind: KindTags, Name: "library/alpine"}, 0, ""},
		{"GET", "/v2/library/alpine/referrers/" + testSHA256, APIPath{Kind: KindReferrers, Name: "library/alpine", Digest: d}, 0, ""},

		// Names: many components, separators.
		{"GET", "/v2/a/b/c/d/e/f/g/manifests/x", APIPath{Kind: KindManifest, Name: "a/b/c/d/e/f/g", Tag: "x"}, 0, ""},
		{"GET", "/v2/my.org/my_image/manifests/x", APIPath{Kind: KindManifest, Name: "my.org/my_image", Tag: "x"}, 0, ""},
		{"GET", "/v2/a__b/c---d/manifests/x", APIPath{Kind: KindManifest, Name: "a__b/c---d", Tag: "x"}, 0, ""},
		{"GET", "/v2/0/9/manifests/x", APIPath{Kind: KindManifest, Name: "0/9", Tag: "x"}, 0, ""},
		// A name may contain the API keywords as components as long as
		// the last keyword decides.
		{"GET", "/v2/x/blobs/y/manifests/latest", APIPath{Kind: KindManifest, Name: "x/blobs/y", Tag: "latest"}, 0, ""},
		{"GET", "/v2/x/manifests/y/manifests/latest", APIPath{Kind: KindManifest, Name: "x/manifests/y", Tag: "latest"}, 0, ""},
		{"GET", "/v2/x/tags/list/manifests/latest", APIPath{Kind: KindManifest, Name: "x/tags/list", Tag: "latest"}, 0, ""},
		{"GET", "/v2/x/referrers/y/tags/list", APIPath{Kind: KindTags, Name: "x/referrers/y"}, 0, ""},
		{"GET", "/v2/x/tags/list/referrers/" + testSHA256, APIPath{Kind: KindReferrers, Name: "x/tags/list", Digest: d}, 0, ""},
		{"GET", "/v2/auth/manifests/latest", APIPath{Kind: KindManifest, Name: "auth", Tag: "latest"}, 0, ""},

		// Not registry API paths.
		{"GET", "/", APIPath{}, 404, CodeUnsupported},
		{"GET", "/v1/_ping", APIPath{}, 404, CodeUnsupported},
		{"GET", "/v2x/", APIPath{}, 404, CodeUnsupported},
		{"GET", "/v2/_catalog", APIPath{}, 404, CodeUnsupported},
		{"GET", "/v2/library/alpine", APIPath{}, 404, CodeUnsupported},
		{"GET", "/v2/library/alpine/", APIPath{}, 404, CodeUnsupported},
		{"GET", "/v2/library/alpine/tags/list/", APIPath{}, 404, CodeUnsupported},
		{"GET", "/v2/library/alpine/tags/listing", APIPath{}, 404, CodeUnsupported},
		{"GET", "/v2/library/alpine/tags", APIPath{}, 404, CodeUnsupported},

		// Pushes are refused whatever the method.
		{"POST", "/v2/library/alpine/blobs/uploads/", APIPath{}, 405, CodeUnsupported},
		{"POST", "/v2/library/alpine/blobs/uploads", APIPath{}, 405, CodeUnsupported},
		{"PATCH", "/v2/library/alpine/blobs/uploads/0a1b2c", APIPath{}, 405, CodeUnsupported},
		{"PUT", "/v2/library/alpine/blobs/uploads/0a1b2c?digest=" + testSHA256, APIPath{}, 405, CodeUnsupported},
		{"GET", "/v2/library/alpine/blobs/uploads/0a1b2c", APIPath{}, 405, CodeUnsupported},
		{"PUT", "/v2/library/alpine/manifests/latest", APIPath{}, 405, CodeUnsupported},
		{"DELETE", "/v2/library/alpine/manifests/" + testSHA256, APIPath{}, 405, CodeUnsupported},
		{"POST", "/v2/library/alpine/manifests/latest", APIPath{}, 405, CodeUnsupported},
		{"DELETE", "/v2/library/alpine/blobs/" + testSHA256, APIPath{}, 405, CodeUnsupported},
		{"PUT", "/v2/library/alpine/blobs/" + testSHA256, APIPath{}, 405, CodeUnsupported},

		// Invalid names.
		{"GET", "/v2/Library/alpine/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/library/Alpine/blobs/" + testSHA256, APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/-a/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a-/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/.a/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a./manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/_a/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a___b/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a..b/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a.-b/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a//b/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2//a/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a//manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a/../b/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a b/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a%2fb/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/ghcr.io:443/a/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/é/manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2//manifests/latest", APIPath{}, 400, CodeNameInvalid},
		{"GET", "/v2/a/tags/list/tags/list/", APIPath{}, 404, CodeUnsupported},
		// Writes are refused before anything else is looked at.
		{"POST", "/v2/UPPER/blobs/uploads/", APIPath{}, 405, CodeUnsupported},

		// Invalid tags.
		{"GET", "/v2/a/manifests/", APIPath{}, 400, CodeTagInvalid},
		{"GET", "/v2/a/manifests/.hidden", APIPath{}, 400, CodeTagInvalid},
		{"GET", "/v2/a/manifests/-dash", APIPath{}, 400, CodeTagInvalid},
		{"GET", "/v2/a/manifests/tag+plus", APIPath{}, 400, CodeTagInvalid},
		// "tag" is not an API keyword: the kind comes from the end.
		{"GET", "/v2/a/manifests/tag/slash", APIPath{}, 404, CodeUnsupported},
		{"GET", "/v2/a/manifests/t%20g", APIPath{}, 400, CodeTagInvalid},
		{"GET", "/v2/a/manifests/" + strings.Repeat("t", 129), APIPath{}, 400, CodeTagInvalid},
		{"GET", "/v2/a/manifests/latest\n", APIPath{}, 400, CodeTagInvalid},

		// Invalid digests (manifests, blobs, referrers).
		{"GET", "/v2/a/manifests/sha256:abc", APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/manifests/md5:d41d8cd98f00b204e9800998ecf8427e", APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/", APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/latest", APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/sha256:", APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/:" + testSHA256[7:], APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/SHA256:" + testSHA256[7:], APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/sha256:" + strings.ToUpper(testSHA256[7:]), APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/" + testSHA256[:len(testSHA256)-1], APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/" + testSHA256 + "0", APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/" + testSHA256[:len(testSHA256)-1] + "g", APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/sha512:" + testSHA256[7:], APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/foo:" + testSHA256[7:], APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/referrers/" + testSHA256[7:], APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/referrers/", APIPath{}, 400, CodeDigestInvalid},
		{"GET", "/v2/a/blobs/" + testSHA256 + "/extra", APIPath{}, 404, CodeUnsupported},
		// A bad digest is reported before the method is.
		{"DELETE", "/v2/a/blobs/sha256:00", APIPath{}, 405, CodeUnsupported},
	}
	for _, tt := range tests {
		got, err := ParsePath(tt.method, tt.path)
		if tt.status == 0 {
			if err != nil {
				t.Errorf("ParsePath(%s, %q): %v, want %+v", tt.method, tt.path, err, tt.want)
				continue
			}
			if got != tt.want {
				t.Errorf("ParsePath(%s, %q) = %+v, want %+v", tt.method, tt.path, got, tt.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("ParsePath(%s, %q) = %+v, want %d %s", tt.method, tt.path, got, tt.status, tt.code)
			continue
		}
		if err.Status != tt.status || err.Code != tt.code {
			t.Errorf("ParsePath(%s, %q) error = %d %s (%s), want %d %s", tt.method, tt.path, err.Status, err.Code, err.Message, tt.status, tt.code)
		}
		if got != (APIPath{}) {
			t.Errorf("ParsePath(%s, %q) returned %+v with an error", tt.method, tt.path, got)
		}
	}
}

// TestParsePathNameGrammar runs a list of names through every kind of path
// and checks ParsePath agrees with the grammar oracle.
func TestParsePathNameGrammar(t *testing.T) {
	names := []string{
		"a", "alpine", "library/alpine", "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p",
		"my.registry.name", "under_score", "double__under", "many---dashes",
		"a.b_c__d-e--f", "0", "00/11", "x1/y2/z3",
		strings.Repeat("a", 255),
		strings.Repeat("ab/", 84) + "abc", // 255
		// invalid
		"A", "aB", "-a", "a-", ".a", "a.", "_a", "a_", "__a", "a__",
		"a___b", "a..b", "a._b", "a-.b", "a/", "/a", "a//b",
		"a:b", "a@b", "a+b", "a b", "a\tb", "a\x00b", "ä",
		strings.Repeat("a", 256),
		strings.Repeat("ab/", 84) + "abcd", // 256
	}
	for _, name := range names {
		want := isDistributionName(name)
		paths := map[string]Kind{
			"/v2/" + name + "/manifests/latest":        KindManifest,
			"/v2/" + name + "/manifests/" + testSHA256: KindManifest,
			"/v2/" + name + "/blobs/" + testSHA256:     KindBlob,
			"/v2/" + name + "/tags/list":               KindTags,
			"/v2/" + name + "/referrers/" + testSHA256: KindReferrers,
		}
		for path, kind := range paths {
			req, err := ParsePath(http.MethodGet, path)
			switch {
			case want && err != nil:
				t.Errorf("ParsePath(%q): %v, want %s of %q", path, err, kind, name)
			case want && (req.Kind != kind || req.Name != name):
				t.Errorf("ParsePath(%q) = %+v, want %s of %q", path, req, kind, name)
			case !want && err == nil:
				t.Errorf("ParsePath(%q) = %+v, want NAME_INVALID", path, req)
			case !want && (err.Status != http.StatusBadRequest || err.Code != CodeNameInvalid):
				// A name with a '/' at the end leaves the keyword
				// intact, so the error must be about the name.
				t.Errorf("ParsePath(%q) error = %d %s, want 400 NAME_INVALID", path, err.Status, err.Code)
			}
		}
	}
}

func TestParsePathTagLength(t *testing.T) {
	for n, ok := range map[int]bool{1: true, 127: true, 128: true, 129: false, 300: false} {
		tag := "v" + strings.Repeat("1", n-1)
		req, err := ParsePath(http.MethodGet, "/v2/a/manifests/"+tag)
		if ok && (err != nil || req.Tag != tag) {
			t.Errorf("tag of %d characters: %+v, %v", n, req, err)
		}
		if !ok && (err == nil || err.Code != CodeTagInvalid || err.Status != http.StatusBadRequest) {
			t.Errorf("tag of %d characters: %+v, %v; want 400 TAG_INVALID", n, req, err)
		}
	}
}

// TestParsePathErrorDetail checks the error carries what registry clients
// print: the offending name, tag or digest.
func TestParsePathErrorDetail(t *testing.T) {
	tests := []struct {
		path, key, value string
	}{
		{"/v2/Bad/manifests/latest", "name", "Bad"},
		{"/v2/a/manifests/-x", "reference", "-x"},
		{"/v2/a/blobs/sha256:00", "digest", "sha256:00"},
	}
	for _, tt := range tests {
		_, err := ParsePath(http.MethodGet, tt.path)
		if err == nil {
			t.Fatalf("ParsePath(%q) accepted", tt.path)
		}
		rec := httptest.NewRecorder()
		WriteError(rec, err)
		if rec.Code != err.Status {
			t.Errorf("%s: status %d, want %d", tt.path, rec.Code, err.Status)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q", tt.path, ct)
		}
		var body struct {
			Errors []struct {
				Code    string
				Message string
				Detail  map[string]string
			}
		}
		if e := json.Unmarshal(rec.Body.Bytes(), &body); e != nil {
			t.Fatalf("%s: body %q: %v", tt.path, rec.Body, e)
		}
		if len(body.Errors) != 1 || body.Errors[0].Code != err.Code || body.Errors[0].Detail[tt.key] != tt.value {
			t.Errorf("%s: body %s, want code %s and detail %s=%q", tt.path, rec.Body, err.Code, tt.key, tt.value)
		}
	}
}

// TestParsePathNamesWithKeywordComponents: the distribution grammar allows
// "manifests", "blobs", "tags" and "referrers" as name components, and
// distribution routes /v2/x/blobs/y/tags/list as the tag list of x/blobs/y.
// ParsePath looks for the keywords in a fixed order (manifests first) and
// gives up at the first one it finds, so these valid requests are refused.
func TestParsePathNamesWithKeywordComponents(t *testing.T) {
	d := digest.Digest(testSHA256)
	tests := []struct {
		path string
		want APIPath
	}{
		{"/v2/x/manifests/y/blobs/" + testSHA256, APIPath{Kind: KindBlob, Name: "x/manifests/y", Digest: d}},
		{"/v2/x/manifests/y/tags/list", APIPath{Kind: KindTags, Name: "x/manifests/y"}},
		{"/v2/x/manifests/y/referrers/" + testSHA256, APIPath{Kind: KindReferrers, Name: "x/manifests/y", Digest: d}},
		{"/v2/x/blobs/y/tags/list", APIPath{Kind: KindTags, Name: "x/blobs/y"}},
		{"/v2/x/blobs/y/referrers/" + testSHA256, APIPath{Kind: KindReferrers, Name: "x/blobs/y", Digest: d}},
		{"/v2/x/blobs/uploadsfoo/blobs/" + testSHA256, APIPath{Kind: KindBlob, Name: "x/blobs/uploadsfoo", Digest: d}},
		{"/v2/x/blobs/uploads/manifests/latest", APIPath{Kind: KindManifest, Name: "x/blobs/uploads", Tag: "latest"}},
	}
	for _, tt := range tests {
		got, err := ParsePath(http.MethodGet, tt.path)
		if err != nil || got != tt.want {
			t.Errorf("ParsePath(GET, %q) = %+v, %v; want %+v", tt.path, got, err, tt.want)
		}
	}
}

// TestParsePathRefusesWrites: "the proxy is read-only", and the request
// path forwards tags/list and referrers with the client's method (with the
// proxy's own credentials for anonymous clients), so writes to them must be
// refused here like writes to manifests and blobs are.
func TestParsePathRefusesWrites(t *testing.T) {
	paths := []string{
		"/v2/library/alpine/manifests/latest",
		"/v2/library/alpine/blobs/" + testSHA256,
		"/v2/library/alpine/tags/list",
		"/v2/library/alpine/referrers/" + testSHA256,
	}
	for _, path := range paths {
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			if _, err := ParsePath(m, path); err != nil {
				t.Errorf("ParsePath(%s, %q): %v", m, path, err)
			}
		}
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			req, err := ParsePath(m, path)
			if err == nil || err.Status != http.StatusMethodNotAllowed || err.Code != CodeUnsupported {
				t.Errorf("ParsePath(%s, %q) = %+v, %v; want 405 UNSUPPORTED", m, path, req, err)
			}
		}
	}
}

func TestRequestReference(t *testing.T) {
	if got := (APIPath{Tag: "latest"}).Reference(); got != "latest" {
		t.Errorf("tag reference = %q", got)
	}
	if got := (APIPath{Digest: testSHA256}).Reference(); got != testSHA256 {
		t.Errorf("digest reference = %q", got)
	}
}

func TestKindString(t *testing.T) {
	want := map[Kind]string{
		KindBase: "base", KindAuth: "auth", KindManifest: "manifest", KindBlob: "blob",
		KindTags: "tags", KindReferrers: "referrers", 0: "unknown", 99: "unknown",
	}
	for k, s := range want {
		if k.String() != s {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), k.String(), s)
		}
	}
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{
		"/v2/", "/v2", "/v2/auth", "/v2/_catalog",
		"/v2/library/alpine/manifests/latest",
		"/v2/library/alpine/manifests/" + testSHA256,
		"/v2/a/b/c/blobs/" + testSHA256,
		"/v2/a.b/c__d/e--f/tags/list",
		"/v2/x/referrers/" + testSHA512,
		"/v2/x/blobs/uploads/",
		"/v2/x/manifests/y/blobs/" + testSHA256,
		"/v2/x/blobs/y/tags/list",
		"/v2/x/tags/list/referrers/" + testSHA384,
		"/v2/A/manifests/-",
	} {
		f.Add("GET", s)
	}
	f.Add("DELETE", "/v2/a/manifests/latest")
	f.Add("HEAD", "/v2/a/blobs/"+testSHA256)
	f.Fuzz(func(t *testing.T, method, path string) {
		req, err := ParsePath(method, path)
		if err != nil {
			if req != (APIPath{}) {
				t.Fatalf("error %v with request %+v", err, req)
			}
			switch err.Status {
			case http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed:
			default:
				t.Fatalf("unexpected status %d (%v)", err.Status, err)
			}
			if err.Code == "" || err.Message == "" {
				t.Fatalf("error without code or message: %+v", err)
			}
			return
		}
		switch req.Kind {
		case KindBase, KindAuth:
			if req.Name != "" || req.Tag != "" || req.Digest != "" {
				t.Fatalf("%s request with fields: %+v", req.Kind, req)
			}
			return
		case KindManifest, KindBlob, KindTags, KindReferrers:
		default:
			t.Fatalf("unknown kind %d", req.Kind)
		}
		if !isDistributionName(req.Name) {
			t.Fatalf("accepted name %q is not a distribution repository name", req.Name)
		}
		if req.Tag != "" && req.Digest != "" {
			t.Fatalf("both tag and digest: %+v", req)
		}
		if req.Digest != "" {
			if e := req.Digest.Validate(); e != nil {
				t.Fatalf("accepted digest %q: %v", req.Digest, e)
			}
		}
		if req.Tag != "" && !anchoredTag.MatchString(req.Tag) {
			t.Fatalf("accepted tag %q", req.Tag)
		}
		switch req.Kind {
		case KindManifest:
			if (req.Tag == "") == (req.Digest == "") {
				t.Fatalf("manifest needs a tag or a digest: %+v", req)
			}
			if method != http.MethodGet && method != http.MethodHead {
				t.Fatalf("manifest %s accepted", method)
			}
		case KindBlob:
			if req.Digest == "" || req.Tag != "" {
				t.Fatalf("blob without digest: %+v", req)
			}
			if method != http.MethodGet && method != http.MethodHead {
				t.Fatalf("blob %s accepted", method)
			}
		case KindReferrers:
			if req.Digest == "" || req.Tag != "" {
				t.Fatalf("referrers without digest: %+v", req)
			}
		case KindTags:
			if req.Digest != "" || req.Tag != "" {
				t.Fatalf("tags with a reference: %+v", req)
			}
		}
		// What goes upstream parses back to the same request.
		up := upstreamPath(req)
		again, err := ParsePath(http.MethodGet, up)
		if err != nil {
			t.Fatalf("upstreamPath(%+v) = %q does not parse: %v", req, up, err)
		}
		if again != req {
			t.Fatalf("upstreamPath(%+v) = %q parses to %+v", req, up, again)
		}
		// Nothing is rewritten on the way: the upstream sees the path
		// the client sent.
		if up != path {
			t.Fatalf("path %q goes upstream as %q", path, up)
		}
	})
}
