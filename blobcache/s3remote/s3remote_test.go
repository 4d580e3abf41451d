package s3remote

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testminio"
)

func newRemote(t *testing.T, srv *testminio.Server, bucket, prefix string) *Remote {
	t.Helper()
	r, err := New(Config{Endpoint: srv.Endpoint, Bucket: bucket, Region: "us-east-1", Prefix: prefix,
		AccessKey: testminio.AccessKey, SecretKey: testminio.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRoundTrips: what Put and SetTag store, Open, Has and Tag give back,
// under the prefix; what is not there is ErrNotFound (or false).
func TestRoundTrips(t *testing.T) {
	srv := testminio.Start(t)
	r := newRemote(t, srv, srv.Bucket, "/cache/")
	ctx := context.Background()
	data := bytes.Repeat([]byte("layer bytes "), 10000)
	d := digest.FromBytes(data)

	if has, err := r.Has(ctx, d); err != nil || has {
		t.Fatalf("Has before Put = %v, %v", has, err)
	}
	if _, err := r.Open(ctx, d); !errors.Is(err, blobcache.ErrNotFound) {
		t.Fatalf("Open before Put: %v, want ErrNotFound", err)
	}
	if _, err := r.Tag(ctx, "docker.io\x00library/alpine\x00latest"); !errors.Is(err, blobcache.ErrNotFound) {
		t.Fatalf("Tag before SetTag: %v, want ErrNotFound", err)
	}

	scopes := []string{"https://registry-1.docker.io/library/alpine", "https://ghcr.io/owner/app"}
	info := blobcache.Info{Digest: d, Size: int64(len(data)), MediaType: "application/vnd.oci.image.layer.v1.tar+gzip"}
	if err := r.Put(ctx, info, scopes, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if has, err := r.Has(ctx, d); err != nil || !has {
		t.Fatalf("Has after Put = %v, %v", has, err)
	}
	e, err := r.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(e.Body)
	e.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("Open gave %d bytes, not the %d put", len(got), len(data))
	}
	if e.Info != info {
		t.Errorf("Open info %+v, want %+v", e.Info, info)
	}
	if !reflect.DeepEqual(e.Scopes, scopes) {
		t.Errorf("Open scopes %q, want %q", e.Scopes, scopes)
	}
	if names := srv.Objects(t, ""); !reflect.DeepEqual(names, []string{"cache/blobs/sha256/" + d.Encoded()}) {
		t.Errorf("objects %q, want the blob under the prefix", names)
	}

	key := "https://registry-1.docker.io\x00library/alpine\x00latest\x00application/vnd.oci.image.index.v1+json"
	tag := blobcache.Tag{Digest: d, MediaType: "application/vnd.oci.image.index.v1+json", Size: 1234, Checked: time.Now().Truncate(time.Millisecond)}
	if err := r.SetTag(ctx, key, tag); err != nil {
		t.Fatal(err)
	}
	gotTag, err := r.Tag(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if gotTag.Digest != tag.Digest || gotTag.MediaType != tag.MediaType || gotTag.Size != tag.Size || !gotTag.Checked.Equal(tag.Checked) {
		t.Errorf("Tag = %+v, want %+v", gotTag, tag)
	}
	if !strings.HasPrefix(r.TagName(key), "cache/tags/") {
		t.Errorf("tag object %s is not under the prefix", r.TagName(key))
	}
	// A record stored under another key's name is not that key's.
	srv.Put(t, r.TagName(key+"x"), srv.Get(t, r.TagName(key)))
	if _, err := r.Tag(ctx, key+"x"); err == nil || errors.Is(err, blobcache.ErrNotFound) {
		t.Errorf("a record of another key: %v, want an error", err)
	}
}

// TestScopesBeyondMetadataLimit: scopes that do not fit in S3's 2 KiB of
// user metadata are left out, the upload still succeeds, and no invalid
// scope (space, control character) is stored.
func TestScopesBeyondMetadataLimit(t *testing.T) {
	srv := testminio.Start(t)
	r := newRemote(t, srv, srv.Bucket, "")
	ctx := context.Background()
	var scopes []string
	for i := range 100 {
		scopes = append(scopes, "https://registry.example.com/team/"+strings.Repeat("x", 40)+"/"+string(rune('a'+i%26))+strings.Repeat("y", i%7))
	}
	scopes = append(scopes, "bad scope", "bad\nscope")
	data := []byte("{}")
	d := digest.FromBytes(data)
	if err := r.Put(ctx, blobcache.Info{Digest: d, Size: 2, MediaType: "application/json"}, scopes, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	e, err := r.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	e.Body.Close()
	if len(e.Scopes) == 0 || len(e.Scopes) >= len(scopes)-2 {
		t.Fatalf("%d scopes kept of %d: want some, not all", len(e.Scopes), len(scopes))
	}
	total := 0
	for _, sc := range e.Scopes {
		total += len(sc) + 1
		if strings.ContainsAny(sc, " \n") || !strings.HasPrefix(sc, "https://registry.example.com/team/") {
			t.Errorf("stored scope %q", sc)
		}
	}
	if total > 2048 {
		t.Errorf("%d bytes of scopes, beyond S3's limit", total)
	}
}

// TestRemoteFailures: a bucket that does not exist and a server that is
// down are errors, not "not found", and say what failed without the
// object's name or the secret key.
func TestRemoteFailures(t *testing.T) {
	srv := testminio.Start(t)
	ctx := context.Background()
	d := digest.FromString("x")
	missing := newRemote(t, srv, "no-such-bucket", "")
	for name, err := range map[string]error{
		"Open": func() error { _, err := missing.Open(ctx, d); return err }(),
		"Tag":  func() error { _, err := missing.Tag(ctx, "k"); return err }(),
		"Put":  missing.Put(ctx, blobcache.Info{Digest: d, Size: 1}, nil, strings.NewReader("x")),
	} {
		if err == nil || errors.Is(err, blobcache.ErrNotFound) {
			t.Errorf("%s in a missing bucket: %v, want an error other than not found", name, err)
		}
	}

	r := newRemote(t, srv, srv.Bucket, "")
	srv.Stop()
	_, err := r.Open(ctx, d)
	if err == nil || errors.Is(err, blobcache.ErrNotFound) {
		t.Fatalf("Open with the server down: %v", err)
	}
	if msg := err.Error(); strings.Contains(msg, d.Encoded()) || strings.Contains(msg, testminio.SecretKey) {
		t.Errorf("error %q names the object or shows the secret", msg)
	}
	if _, err := r.Has(ctx, d); err == nil {
		t.Error("Has with the server down: no error")
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{Endpoint: "https://s3.example.com", Bucket: "cache", AccessKey: "id", SecretKey: "a-secret-value"}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	keyless := good
	keyless.AccessKey, keyless.SecretKey = "", ""
	if err := keyless.Validate(); err != nil {
		t.Fatalf("config without keys (the environment's then): %v", err)
	}
	for _, tt := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.Endpoint = "" }, "endpoint is required"},
		{func(c *Config) { c.Endpoint = "s3.example.com" }, "want an http:// or https:// URL"},
		{func(c *Config) { c.Endpoint = "ftp://s3.example.com" }, "want an http:// or https:// URL"},
		{func(c *Config) { c.Endpoint = "https://" }, "no host"},
		{func(c *Config) { c.Endpoint = "https://s3.example.com/cache" }, "only scheme and host"},
		{func(c *Config) { c.Endpoint = "https://id:pw@s3.example.com" }, "access_key and secret_key"},
		{func(c *Config) { c.Bucket = "" }, "bucket is required"},
		{func(c *Config) { c.Bucket = "Cache_Bucket" }, "invalid bucket 'Cache_Bucket'"},
		{func(c *Config) { c.AccessKey = "" }, "give both access_key and secret_key, or neither"},
		{func(c *Config) { c.SecretKey = "" }, "give both access_key and secret_key, or neither"},
	} {
		c := good
		tt.change(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want %q", c, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "a-secret-value") {
			t.Errorf("error %q shows the secret", err)
		}
	}
}

// TestKeysFromTheEnvironment: with neither key configured, the standard
// AWS credentials of the environment sign the requests.
func TestKeysFromTheEnvironment(t *testing.T) {
	srv := testminio.Start(t)
	t.Setenv("AWS_ACCESS_KEY_ID", testminio.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testminio.SecretKey)
	r, err := New(Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket, Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("signed with the environment's keys")
	d := digest.FromBytes(data)
	ctx := context.Background()
	if err := r.Put(ctx, blobcache.Info{Digest: d, Size: int64(len(data))}, nil, bytes.NewReader(data)); err != nil {
		t.Fatalf("Put with the environment's keys: %v", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-key")
	wrong, err := New(Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket, Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wrong.Has(ctx, d); err == nil {
		t.Fatal("a wrong key from the environment was accepted: the environment was not used")
	}
}

// TestBigEntryInParts: an entry bigger than a part goes up as a multipart
// upload read from its file, and comes back whole.
func TestBigEntryInParts(t *testing.T) {
	srv := testminio.Start(t)
	r := newRemote(t, srv, srv.Bucket, "")
	data := make([]byte, 2*uploadPart+12345)
	for i := range data {
		data[i] = byte(i*7 + i>>11)
	}
	d := digest.FromBytes(data)
	f, err := os.CreateTemp(t.TempDir(), "entry")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	info := blobcache.Info{Digest: d, Size: int64(len(data)), MediaType: "application/vnd.oci.image.layer.v1.tar"}
	if err := r.Put(ctx, info, []string{"scope-a"}, io.NewSectionReader(f, 0, info.Size)); err != nil {
		t.Fatalf("Put of %d bytes: %v", len(data), err)
	}
	e, err := r.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Body.Close()
	got, err := io.ReadAll(e.Body)
	if err != nil || digest.FromBytes(got) != d || e.Size != info.Size || e.MediaType != info.MediaType {
		t.Fatalf("Open: %d bytes (size %d, %q), %v; want the %d bytes put", len(got), e.Size, e.MediaType, err, len(data))
	}
}
