package blobcache_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
	"github.com/caddy-dockerproxy/dockerproxy/blobcache/s3remote"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testminio"
)

// TestUploadsAfterCommit: what a store commits (a Put, a fill) and the tag
// records it sets reach the remote in the background, with media type and
// scopes; what is meant to stay local (PutLocal, SetLocalTag) does not.
func TestUploadsAfterCommit(t *testing.T) {
	srv := testminio.Start(t)
	r, err := s3remote.New(s3remote.Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket, Region: "us-east-1",
		AccessKey: testminio.AccessKey, SecretKey: testminio.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	s, err := blobcache.Open(blobcache.Options{Dir: t.TempDir(), NoSync: true, Remote: r})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()

	manifest := []byte(`{"schemaVersion":2}`)
	md := digest.FromBytes(manifest)
	local := []byte(`{"kept":"here"}`)
	ld := digest.FromBytes(local)
	if err := s.Put(md, "application/vnd.oci.image.manifest.v1+json", manifest); err != nil {
		t.Fatal(err)
	}
	if err := s.PutLocal(ld, "application/json", local); err != nil {
		t.Fatal(err)
	}
	layer := bytes.Repeat([]byte("layer"), 50000)
	bd := digest.FromBytes(layer)
	f, leader := s.Join(bd)
	if !leader {
		t.Fatal("not the leader of a new fill")
	}
	if err := s.Allow(bd, "https://registry.test/team/app"); err != nil {
		t.Fatal(err)
	}
	if err := f.Start(blobcache.Source{Body: io.NopCloser(bytes.NewReader(layer)), Size: int64(len(layer)), MediaType: "application/octet-stream"}); err != nil {
		t.Fatal(err)
	}
	rd, err := f.Reader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, rd); err != nil {
		t.Fatal(err)
	}
	rd.Close()
	tag := blobcache.Tag{Digest: md, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(len(manifest)), Checked: time.Now().Truncate(time.Millisecond)}
	if err := s.SetTag("shared-key", tag); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLocalTag("local-key", tag); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := s.WaitUploads(wctx); err != nil {
		t.Fatal(err)
	}

	e, err := r.Open(ctx, md)
	if err != nil {
		t.Fatalf("manifest not uploaded: %v", err)
	}
	got, _ := io.ReadAll(e.Body)
	e.Body.Close()
	if !bytes.Equal(got, manifest) || e.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("uploaded manifest %q (%s)", got, e.MediaType)
	}
	e, err = r.Open(ctx, bd)
	if err != nil {
		t.Fatalf("filled blob not uploaded: %v", err)
	}
	n, _ := io.Copy(io.Discard, e.Body)
	e.Body.Close()
	if n != int64(len(layer)) || !reflect.DeepEqual(e.Scopes, []string{"https://registry.test/team/app"}) {
		t.Errorf("uploaded blob: %d bytes, scopes %q", n, e.Scopes)
	}
	if has, err := r.Has(ctx, ld); err != nil || has {
		t.Errorf("PutLocal's entry in the remote: %v, %v", has, err)
	}
	if got, err := r.Tag(ctx, "shared-key"); err != nil || got.Digest != md || !got.Checked.Equal(tag.Checked) {
		t.Errorf("tag record in the remote: %+v, %v", got, err)
	}
	if _, err := r.Tag(ctx, "local-key"); !errors.Is(err, blobcache.ErrNotFound) {
		t.Errorf("SetLocalTag's record in the remote: %v", err)
	}
}
