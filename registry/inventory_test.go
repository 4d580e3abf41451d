package registry

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

// TestInventoryReadsKeysAsTheyAreBuilt: the inventory reads back the tag
// keys and access scopes that the request path builds, for upstreams with
// ports and repositories of several components.
func TestInventoryReadsKeysAsTheyAreBuilt(t *testing.T) {
	for _, c := range []struct{ up, name, tag, accept string }{
		{"https://registry-1.docker.io", "library/alpine", "3.20", "application/vnd.oci.image.index.v1+json"},
		{"http://127.0.0.1:5000", "a/b/c", "v1.2-rc_3", ""},
	} {
		u, _ := url.Parse(c.up)
		tg := target{up: Upstream{Name: u.Host, URL: u}, prefix: "/v2/"}
		r := httptest.NewRequest(http.MethodGet, "/v2/"+c.name+"/manifests/"+c.tag, nil)
		if c.accept != "" {
			r.Header.Set("Accept", c.accept)
		}
		p := &pull{r: r, t: tg, path: APIPath{Kind: KindManifest, Name: c.name, Tag: c.tag}}
		key, _, _ := p.tagKey()
		repo, tag, ok := parseTagKey(key)
		if !ok || repo != (repoKey{c.up, c.name}) || tag != c.tag {
			t.Errorf("tag key %q read as %+v %q %v", key, repo, tag, ok)
		}
		for _, identity := range []string{anonymousIdentity, accountIdentity + "user%7Cx:abc"} {
			scope := accessScope(identity, tg, c.name)
			if repo, ok := parseScope(scope); !ok || repo != (repoKey{c.up, c.name}) {
				t.Errorf("scope %q read as %+v %v", scope, repo, ok)
			}
		}
	}
}

func TestParseImageRef(t *testing.T) {
	d := digest.FromString("x")
	for _, c := range []struct {
		in   string
		want ImageRef
		code string
	}{
		{in: "docker.io/library/alpine", want: ImageRef{Upstream: "docker.io", Repository: "library/alpine"}},
		{in: "docker.io/alpine:3.20", want: ImageRef{Upstream: "docker.io", Repository: "library/alpine", Tag: "3.20"}},
		{in: "registry-1.docker.io/alpine", want: ImageRef{Upstream: "docker.io", Repository: "library/alpine"}},
		{in: "ghcr.io/owner/app@" + d.String(), want: ImageRef{Upstream: "ghcr.io", Repository: "owner/app", Digest: d}},
		{in: "127.0.0.1:5000/team/app:v1", want: ImageRef{Upstream: "127.0.0.1:5000", Repository: "team/app", Tag: "v1"}},
		{in: "Quay.IO/org/x", want: ImageRef{Upstream: "quay.io", Repository: "org/x"}},
		{in: "docker.io", code: CodeNameInvalid},
		{in: "docker.io/", code: CodeNameInvalid},
		{in: "/library/alpine", code: CodeNameInvalid},
		{in: "bad_host/x", code: CodeNameInvalid},
		{in: "docker.io/Alpine", code: CodeNameInvalid},
		{in: "docker.io/a//b", code: CodeNameInvalid},
		{in: "docker.io/alpine:", code: CodeTagInvalid},
		{in: "docker.io/alpine:-x", code: CodeTagInvalid},
		{in: "docker.io/alpine@sha256:abc", code: CodeDigestInvalid},
		{in: "docker.io/alpine@", code: CodeDigestInvalid},
		{in: "docker.io/alpine:1@" + d.String(), code: CodeNameInvalid},
	} {
		got, err := ParseImageRef(c.in)
		switch {
		case c.code != "" && (err == nil || err.Code != c.code || err.Status != http.StatusBadRequest):
			t.Errorf("ParseImageRef(%q) = %+v, %v; want %s", c.in, got, err, c.code)
		case c.code == "" && (err != nil || got != c.want):
			t.Errorf("ParseImageRef(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

// FuzzParseImageRef: whatever the path, the parser answers a valid
// reference or a 400, never a panic.
func FuzzParseImageRef(f *testing.F) {
	for _, s := range []string{"docker.io/library/alpine:3.20", "ghcr.io/a/b@sha256:" + strings.Repeat("0", 64), "h:1/x", "a/b:c:d", "a/@", "x/y/../z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ref, err := ParseImageRef(s)
		if err != nil {
			if err.Status != http.StatusBadRequest {
				t.Fatalf("ParseImageRef(%q): status %d", s, err.Status)
			}
			return
		}
		if validateName(ref.Repository) != nil || !anchoredDomain.MatchString(ref.Upstream) ||
			ref.Tag != "" && !anchoredTag.MatchString(ref.Tag) || ref.Digest != "" && ref.Digest.Validate() != nil ||
			ref.Tag != "" && ref.Digest != "" {
			t.Fatalf("ParseImageRef(%q) = %+v: not valid", s, ref)
		}
	})
}

// TestImagesListATagWhoseManifestWentAway: a tag record whose manifest the
// cache no longer holds (evicted) is listed with the manifest not cached,
// typed as the record says, and a purge of the tag removes the record.
func TestImagesListATagWhoseManifestWentAway(t *testing.T) {
	store, err := blobcache.Open(blobcache.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	<-store.IndexLoaded()
	u, _ := url.Parse("https://ghcr.io")
	up := Upstream{Name: "ghcr.io", URL: u}
	d := digest.FromString("an evicted manifest")
	const mt = "application/vnd.oci.image.manifest.v1+json"
	if err := store.SetTag(up.String()+"\x00org/app\x00v1\x00"+mt, blobcache.Tag{Digest: d, MediaType: mt, Size: 10, Checked: time.Now()}); err != nil {
		t.Fatal(err)
	}
	c := &Catalog{Store: store, Upstreams: []Upstream{up}}
	inv := c.Images("ghcr.io", "org/app")
	if !inv.Complete || len(inv.Repositories) != 1 {
		t.Fatalf("inventory %+v", inv)
	}
	r := inv.Repositories[0]
	want := []ManifestView{{Digest: d, MediaType: mt}}
	if r.Upstream != "ghcr.io" || len(r.Tags) != 1 || r.Tags[0].Digest != d || !reflect.DeepEqual(r.Manifests, want) {
		t.Fatalf("repository %+v, want manifests %+v", r, want)
	}
	rep, err := c.Purge(ImageRef{Upstream: "ghcr.io", Repository: "org/app", Tag: "v1"})
	if err != nil || rep.Removed.TagRecords != 1 || len(rep.Removed.Manifests) != 0 {
		t.Fatalf("purge: %+v %v", rep, err)
	}
	if _, err := c.Purge(ImageRef{Upstream: "ghcr.io", Repository: "org/app", Tag: "v1"}); !errors.Is(err, ErrNotCached) {
		t.Fatalf("second purge: %v, want ErrNotCached", err)
	}
}
