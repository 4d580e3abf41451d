package testupstream

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// start returns an upstream whose realm is advertised as auth.test, so that
// ggcr accepts it, and remote options that dial auth.test to the realm.
func start(t *testing.T) (*Upstream, func(authn.Authenticator) []remote.Option) {
	t.Helper()
	u := Start(t, Options{RealmHost: "auth.test"})
	tr := HostMapTransport(map[string]string{"auth.test": u.RealmAddr})
	t.Cleanup(tr.CloseIdleConnections)
	return u, func(a authn.Authenticator) []remote.Option {
		return []remote.Option{remote.WithTransport(tr), remote.WithAuth(a)}
	}
}

func remoteImage(t *testing.T, u *Upstream, s string, opts func(authn.Authenticator) []remote.Option) (v1.Image, error) {
	t.Helper()
	return remote.Image(ref(t, u, s), opts(authn.Anonymous)...)
}

func ref(t *testing.T, u *Upstream, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(u.Host+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// client never follows redirects, so tests see the 307s themselves.
var client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func do(t *testing.T, method, url string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, b
}

// token gets a token from the realm for the given scopes (GET flow).
func token(t *testing.T, u *Upstream, user, pass string, scopes ...string) string {
	t.Helper()
	q := url.Values{"service": {u.Service}, "scope": scopes}
	req, _ := http.NewRequest(http.MethodGet, u.RealmURL+"/token?"+q.Encode(), nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("token: status %d", resp.StatusCode)
	}
	var tr tokenResponse
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		t.Fatal(err)
	}
	return tr.Token
}

func bearer(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestPullPublicAnonymous(t *testing.T) {
	u, opts := start(t)
	want := u.PushRandomImage(t, "library/alpine", "latest", 2, 1024)
	img, err := remote.Image(ref(t, u, "library/alpine:latest"), opts(authn.Anonymous)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatal(err)
	}
	wd, _ := want.Digest()
	gd, _ := img.Digest()
	if wd != gd {
		t.Fatalf("digest %s, want %s", gd, wd)
	}
	if u.Counters.ManifestGETsFor("library/alpine") == 0 || u.Counters.BlobGETs() == 0 ||
		u.Counters.ObjectStoreGETs() == 0 || u.Counters.TokenRequests() == 0 {
		t.Fatalf("counters not moved: mget=%d bget=%d oget=%d tok=%d", u.Counters.ManifestGETs(),
			u.Counters.BlobGETs(), u.Counters.ObjectStoreGETs(), u.Counters.TokenRequests())
	}
}

func TestPrivateRepository(t *testing.T) {
	u, opts := start(t)
	u.PushRandomImage(t, "acme/secret", "v1", 1, 512)
	u.SetPrivate("acme/secret", "alice", "s3cret")
	u.AddUser("bob", "bobpw")
	r := ref(t, u, "acme/secret:v1")

	img, err := remote.Image(r, opts(&authn.Basic{Username: "alice", Password: "s3cret"})...)
	if err != nil {
		t.Fatalf("owner: %v", err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatal(err)
	}

	for name, a := range map[string]authn.Authenticator{
		"anonymous":  authn.Anonymous,
		"wrong pass": &authn.Basic{Username: "alice", Password: "nope"},
		"other user": &authn.Basic{Username: "bob", Password: "bobpw"},
	} {
		_, err := remote.Image(r, opts(a)...)
		var te *transport.Error
		if !errors.As(err, &te) || te.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: got %v, want a 401", name, err)
		}
	}
}

func TestChallenges(t *testing.T) {
	u := Start(t, Options{})
	resp, _ := do(t, "GET", u.URL+"/v2/", nil)
	want := fmt.Sprintf(`Bearer realm="%s/token",service="registry.test"`, u.RealmURL)
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != want {
		t.Fatalf("/v2/: %d %q, want 401 %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
	}
	for _, p := range []string{"/v2/library/x/manifests/latest", "/v2/a/b/c/blobs/sha256:" + strings.Repeat("0", 64), "/v2/x/tags/list"} {
		resp, body := do(t, "GET", u.URL+p, nil)
		repo := parseRoute(p).repo
		want := fmt.Sprintf(`Bearer realm="%s/token",service="registry.test",scope="repository:%s:pull",error="insufficient_scope"`, u.RealmURL, repo)
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != want {
			t.Errorf("%s: %d %q, want 401 %q", p, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
		}
		var e struct{ Errors []struct{ Code string } }
		if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) != 1 || e.Errors[0].Code != "UNAUTHORIZED" {
			t.Errorf("%s: body %s", p, body)
		}
	}
	// A valid token for another repository is not enough.
	tok := token(t, u, "", "", "repository:other:pull")
	if resp, _ := do(t, "GET", u.URL+"/v2/", bearer(tok)); resp.StatusCode != 200 {
		t.Errorf("/v2/ with token: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", u.URL+"/v2/library/x/manifests/latest", bearer(tok)); resp.StatusCode != 401 {
		t.Errorf("wrong scope: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", u.URL+"/v2/library/x/manifests/latest", bearer("forged")); resp.StatusCode != 401 {
		t.Errorf("forged token: %d", resp.StatusCode)
	}
}

func TestTokenEndpoint(t *testing.T) {
	u := Start(t, Options{})
	u.PushRandomImage(t, "pub/a", "latest", 1, 100)
	u.PushRandomImage(t, "priv/b", "latest", 1, 100)
	u.SetPrivate("priv/b", "carol", "pw")

	post := func(form url.Values) (*http.Response, tokenResponse) {
		resp, err := http.PostForm(u.RealmURL+"/token", form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tr tokenResponse
		_ = json.NewDecoder(resp.Body).Decode(&tr)
		return resp, tr
	}
	scope := "repository:pub/a:pull repository:priv/b:pull"
	resp, tr := post(url.Values{"grant_type": {"password"}, "username": {"carol"}, "password": {"pw"},
		"scope": {scope}, "service": {u.Service}, "client_id": {"containerd"}})
	if resp.StatusCode != 200 || tr.Token == "" || tr.AccessToken != tr.Token || tr.ExpiresIn != 300 || tr.IssuedAt == "" {
		t.Fatalf("POST: %d %+v", resp.StatusCode, tr)
	}
	for _, repo := range []string{"pub/a", "priv/b"} {
		if r, _ := do(t, "HEAD", u.URL+"/v2/"+repo+"/manifests/latest", bearer(tr.Token)); r.StatusCode != 200 {
			t.Errorf("POST token on %s: %d", repo, r.StatusCode)
		}
	}
	if resp, _ := post(url.Values{"grant_type": {"password"}, "username": {"carol"}, "password": {"bad"}, "scope": {scope}}); resp.StatusCode != 401 {
		t.Errorf("POST wrong password: %d", resp.StatusCode)
	}

	// GET, anonymous, several scope parameters: only the public one granted.
	tok := token(t, u, "", "", "repository:pub/a:pull", "repository:priv/b:pull")
	if r, _ := do(t, "HEAD", u.URL+"/v2/pub/a/manifests/latest", bearer(tok)); r.StatusCode != 200 {
		t.Errorf("anonymous public: %d", r.StatusCode)
	}
	if r, _ := do(t, "HEAD", u.URL+"/v2/priv/b/manifests/latest", bearer(tok)); r.StatusCode != 401 {
		t.Errorf("anonymous private: %d", r.StatusCode)
	}
	// GET with basic credentials.
	tok = token(t, u, "carol", "pw", "repository:priv/b:pull")
	if r, _ := do(t, "HEAD", u.URL+"/v2/priv/b/manifests/latest", bearer(tok)); r.StatusCode != 200 {
		t.Errorf("basic GET token: %d", r.StatusCode)
	}
	req, _ := http.NewRequest("GET", u.RealmURL+"/token?scope=repository:priv/b:pull", nil)
	req.SetBasicAuth("carol", "wrong")
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 401 {
		t.Errorf("GET wrong password: %d", r.StatusCode)
	}
	if got := u.Counters.TokenRequests(); got != 5 {
		t.Errorf("TokenRequests = %d, want 5", got)
	}
}

func TestBlobRedirectAndObjectStore(t *testing.T) {
	u := Start(t, Options{})
	_, g := u.PushGeneratedImage(t, "big/blob", "latest", 7, 100_000)
	u.PushRandomImage(t, "other/repo", "latest", 1, 100)
	tok := token(t, u, "", "", "repository:big/blob:pull", "repository:other/repo:pull")
	blobURL := u.URL + "/v2/big/blob/blobs/" + g.Digest.String()

	resp, _ := do(t, "HEAD", blobURL, bearer(tok))
	if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != "100000" ||
		resp.Header.Get("Docker-Content-Digest") != g.Digest.String() || resp.Header.Get("Location") != "" {
		t.Fatalf("HEAD: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = do(t, "GET", blobURL, bearer(tok))
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 307 || !strings.HasPrefix(loc, u.ObjectStoreURL+"/blobs/"+g.Digest.String()+"?") {
		t.Fatalf("GET: %d Location %q", resp.StatusCode, loc)
	}
	// The object store refuses registry credentials, as S3 does.
	resp, body := do(t, "GET", loc, bearer(tok))
	if resp.StatusCode != 403 || !strings.Contains(string(body), "<Error>") {
		t.Fatalf("with Authorization: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "GET", loc, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/octet-stream" ||
		resp.ContentLength != 100000 || sha(body) != g.Digest.String() {
		t.Fatalf("object GET: %d %v len %d", resp.StatusCode, resp.Header, len(body))
	}
	resp, body = do(t, "GET", loc, map[string]string{"Range": "bytes=1000-2999"})
	full := make([]byte, 100000)
	if _, err := io.ReadFull(g.Open(), full); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 206 || !bytes.Equal(body, full[1000:3000]) ||
		resp.Header.Get("Content-Range") != "bytes 1000-2999/100000" {
		t.Fatalf("Range: %d %v", resp.StatusCode, resp.Header)
	}
	// Tampered and expired signatures.
	if resp, _ := do(t, "GET", strings.Replace(loc, "sig=", "sig=00", 1), nil); resp.StatusCode != 403 {
		t.Errorf("bad sig: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", u.SignedBlobURL(g.Digest, time.Now().Add(-time.Minute)), nil); resp.StatusCode != 403 {
		t.Errorf("expired: %d", resp.StatusCode)
	}
	// A blob is only reachable through a repository that holds it.
	if resp, _ := do(t, "GET", u.URL+"/v2/other/repo/blobs/"+g.Digest.String(), bearer(tok)); resp.StatusCode != 404 {
		t.Errorf("unlinked blob: %d", resp.StatusCode)
	}
	// Pushing through the front is refused.
	if resp, _ := do(t, "POST", u.URL+"/v2/big/blob/blobs/uploads/", bearer(tok)); resp.StatusCode != 401 {
		t.Errorf("push: %d", resp.StatusCode)
	}
}

func TestAcceptNegotiation(t *testing.T) {
	u := Start(t, Options{})
	idx := u.PushRandomIndex(t, "multi/arch", "latest")
	idxDigest, _ := idx.Digest()
	im, _ := idx.IndexManifest()
	var amd64 v1.Hash
	for _, d := range im.Manifests {
		if d.Platform.Architecture == "amd64" {
			amd64 = d.Digest
		}
	}
	tok := token(t, u, "", "", "repository:multi/arch:pull")
	all := strings.Join([]string{string(types.DockerManifestSchema2), string(types.DockerManifestList),
		string(types.OCIManifestSchema1), string(types.OCIImageIndex)}, ", ")
	for _, tc := range []struct {
		name, ref, accept string
		want              v1.Hash
		wantType          types.MediaType
	}{
		{"all types", "latest", all, idxDigest, types.DockerManifestList},
		{"oci index only", "latest", string(types.OCIImageIndex), idxDigest, types.DockerManifestList},
		{"schema2 only", "latest", string(types.DockerManifestSchema2), amd64, types.DockerManifestSchema2},
		{"no accept", "latest", "", amd64, types.DockerManifestSchema2},
		{"by digest, no accept", idxDigest.String(), "", idxDigest, types.DockerManifestList},
	} {
		for _, m := range []string{"GET", "HEAD"} {
			hdr := bearer(tok)
			if tc.accept != "" {
				hdr["Accept"] = tc.accept
			}
			resp, body := do(t, m, u.URL+"/v2/multi/arch/manifests/"+tc.ref, hdr)
			if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != tc.want.String() ||
				resp.Header.Get("Content-Type") != string(tc.wantType) {
				t.Errorf("%s %s: %d %s %s, want %s %s", m, tc.name, resp.StatusCode,
					resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("Content-Type"), tc.want, tc.wantType)
			}
			if m == "GET" && sha(body) != tc.want.String() {
				t.Errorf("%s: body digest %s", tc.name, sha(body))
			}
			if resp.Header.Get("ratelimit-limit") != "100;w=21600" || !strings.HasSuffix(resp.Header.Get("ratelimit-remaining"), ";w=21600") {
				t.Errorf("%s %s: ratelimit headers %v", m, tc.name, resp.Header)
			}
		}
	}
	if g, h := u.Counters.ManifestGETs(), u.Counters.ManifestHEADs(); g != 5 || h != 5 {
		t.Errorf("GETs %d HEADs %d, want 5 and 5", g, h)
	}
	resp, _ := do(t, "HEAD", u.URL+"/v2/multi/arch/manifests/latest", bearer(tok))
	if got := resp.Header.Get("ratelimit-remaining"); got != "95;w=21600" {
		t.Errorf("ratelimit-remaining %q after 5 GETs", got)
	}
}

func TestTagsPagination(t *testing.T) {
	u, opts := start(t)
	img, err := random.Image(100, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"e", "a", "c", "b", "d"} {
		u.PushImage(t, "lib/tags", tag, img)
	}
	tok := token(t, u, "", "", "repository:lib/tags:pull")
	next := "/v2/lib/tags/tags/list?n=2"
	var pages [][]string
	for next != "" && len(pages) < 10 {
		resp, body := do(t, "GET", u.URL+next, bearer(tok))
		var tl tagList
		if err := json.Unmarshal(body, &tl); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", next, resp.StatusCode, body)
		}
		pages = append(pages, tl.Tags)
		next = ""
		if l := resp.Header.Get("Link"); l != "" {
			next = strings.TrimSuffix(strings.TrimPrefix(l, "<"), `>; rel="next"`)
		}
	}
	if got := fmt.Sprint(pages); got != "[[a b] [c d] [e]]" {
		t.Errorf("pages %s", got)
	}
	_, body := do(t, "GET", u.URL+"/v2/lib/tags/tags/list?last=z", bearer(tok))
	if !strings.Contains(string(body), `"tags":[]`) {
		t.Errorf("last past the end: %s", body)
	}
	tags, err := remote.List(ref(t, u, "lib/tags").Context(), opts(authn.Anonymous)...)
	if err != nil || fmt.Sprint(tags) != "[a b c d e]" {
		t.Errorf("remote.List: %v %v", tags, err)
	}
}

func TestReferrers(t *testing.T) {
	u, opts := start(t)
	subject := u.PushRandomImage(t, "sig/repo", "latest", 1, 100)
	sd, _ := subject.Digest()
	desc, _ := partialDescriptor(subject)
	art, err := random.Image(50, 1)
	if err != nil {
		t.Fatal(err)
	}
	art = mutate.MediaType(art, types.OCIManifestSchema1)
	art = mutate.ConfigMediaType(art, "application/vnd.test.sig")
	art = mutate.Subject(art, desc).(v1.Image)
	u.PushImage(t, "sig/repo", "", art)

	d := ref(t, u, "sig/repo@"+sd.String()).(name.Digest)
	idx, err := remote.Referrers(d, opts(authn.Anonymous)...)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	ad, _ := art.Digest()
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != ad {
		t.Fatalf("referrers: %+v", im.Manifests)
	}
	u.SetPrivate("sig/repo", "dave", "pw")
	if _, err := remote.Referrers(d, opts(authn.Anonymous)...); err == nil {
		t.Fatal("private referrers served anonymously")
	}
	if u.Counters.ReferrersRequests() != 1 {
		t.Errorf("ReferrersRequests = %d", u.Counters.ReferrersRequests())
	}
}

func partialDescriptor(img v1.Image) (v1.Descriptor, error) {
	d, err := img.Digest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	s, _ := img.Size()
	mt, _ := img.MediaType()
	return v1.Descriptor{Digest: d, Size: s, MediaType: mt}, nil
}

func TestCounters(t *testing.T) {
	u := Start(t, Options{})
	img := u.PushRandomImage(t, "count/me", "latest", 1, 1000)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	lsize, _ := layers[0].Size()
	tok := token(t, u, "", "", "repository:count/me:pull")
	base := u.URL + "/v2/count/me/"
	do(t, "GET", base+"manifests/latest", nil) // 401: not counted as a manifest GET
	do(t, "GET", base+"manifests/latest", bearer(tok))
	do(t, "GET", base+"manifests/latest", bearer(tok))
	do(t, "HEAD", base+"manifests/latest", bearer(tok))
	do(t, "HEAD", base+"blobs/"+ld.String(), bearer(tok))
	resp, _ := do(t, "GET", base+"blobs/"+ld.String(), bearer(tok))
	do(t, "GET", resp.Header.Get("Location"), nil)
	do(t, "GET", base+"tags/list", bearer(tok))

	c := u.Counters
	for name, got := range map[string][2]int64{
		"ManifestGETs":        {c.ManifestGETs(), 2},
		"ManifestGETsFor":     {c.ManifestGETsFor("count/me"), 2},
		"ManifestHEADs":       {c.ManifestHEADs(), 1},
		"ManifestHEADsFor":    {c.ManifestHEADsFor("count/me"), 1},
		"BlobGETs":            {c.BlobGETs(), 1},
		"BlobGETsFor":         {c.BlobGETsFor(ld.String()), 1},
		"BlobHEADs":           {c.BlobHEADs(), 1},
		"BlobHEADsFor":        {c.BlobHEADsFor(ld.String()), 1},
		"ObjectStoreGETs":     {c.ObjectStoreGETs(), 1},
		"ObjectStoreGETsFor":  {c.ObjectStoreGETsFor(ld.String()), 1},
		"BlobBytes":           {c.BlobBytes(), lsize},
		"TagListRequests":     {c.TagListRequests(), 1},
		"TokenRequests":       {c.TokenRequests(), 1},
		"RealmRequests":       {c.RealmRequests(), 1},
		"RegistryRequests":    {c.RegistryRequests(), 7},
		"ObjectStoreRequests": {c.ObjectStoreRequests(), 1},
	} {
		if got[0] != got[1] {
			t.Errorf("%s = %d, want %d", name, got[0], got[1])
		}
	}
	c.Reset()
	if c.ManifestGETs()+c.ManifestGETsFor("count/me")+c.BlobBytes()+c.RegistryRequests()+c.TokenRequests() != 0 {
		t.Error("Reset left counts")
	}
	resp, _ = do(t, "HEAD", base+"manifests/latest", bearer(tok))
	if resp.Header.Get("ratelimit-remaining") != "100;w=21600" {
		t.Errorf("after Reset: %q", resp.Header.Get("ratelimit-remaining"))
	}
}

func TestRecordedRequestsIssuedTokensAndAddedHeaders(t *testing.T) {
	u := Start(t, Options{RecordRequests: true})
	u.SetPrivate("rec/secret", "alice", "pw")
	img := u.PushRandomImage(t, "rec/secret", "latest", 1, 1000)
	d := mustLayerDigest(t, img)
	tok := token(t, u, "alice", "pw", "repository:rec/secret:pull")
	resp, _ := do(t, "GET", u.URL+"/v2/rec/secret/blobs/"+d.String(), map[string]string{"Authorization": "Bearer " + tok, "X-Mark": "registry"})
	loc := resp.Header.Get("Location")
	u.AddResponseHeaders(ObjectStoreListener, http.Header{"Connection": {"X-Foo"}, "X-Foo": {"1"}})
	resp, _ = do(t, "GET", loc, map[string]string{"Range": "bytes=0-9"})
	if resp.Header.Get("X-Foo") != "1" || resp.Header.Get("Connection") != "X-Foo" {
		t.Errorf("added headers missing: %v", resp.Header)
	}
	u.AddResponseHeaders(ObjectStoreListener, nil)
	if resp, _ = do(t, "GET", loc, nil); resp.Header.Get("X-Foo") != "" {
		t.Errorf("added headers still sent: %v", resp.Header)
	}

	if got := u.IssuedTokens(); len(got) != 1 || got[0] != tok {
		t.Errorf("IssuedTokens = %q, want [%q]", got, tok)
	}
	realm := u.Requests(RealmListener)
	if len(realm) != 1 {
		t.Fatalf("realm requests %+v", realm)
	}
	if user, pass, ok := (&http.Request{Header: realm[0].Header}).BasicAuth(); !ok || user != "alice" || pass != "pw" {
		t.Errorf("realm request %+v", realm[0])
	}
	reg := u.Requests(RegistryListener)
	if len(reg) != 1 || reg[0].Method != "GET" || reg[0].Header.Get("X-Mark") != "registry" || reg[0].Header.Get("Authorization") != "Bearer "+tok {
		t.Errorf("registry requests %+v", reg)
	}
	objs := u.Requests(ObjectStoreListener)
	if len(objs) != 2 || objs[0].Header.Get("Range") != "bytes=0-9" || !strings.HasPrefix(objs[0].URI, "/blobs/"+d.String()+"?") {
		t.Errorf("object store requests %+v", objs)
	}

	// Without RecordRequests, nothing is kept.
	quiet := Start(t, Options{})
	do(t, "GET", quiet.URL+"/v2/", nil)
	if n := len(quiet.Requests(RegistryListener)); n != 0 {
		t.Errorf("%d requests recorded without RecordRequests", n)
	}
}

func mustLayerDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) == 0 {
		t.Fatal(err)
	}
	d, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
