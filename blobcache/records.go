package blobcache

// The JSON files the store writes beside its data: entry sidecars and tag
// records.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
)

// maxMetaFile bounds what the sidecar and tag loaders accept, so a damaged
// or hostile file cannot make Open or Tag allocate without limit.
const maxMetaFile = 4 << 20

// sidecar is the JSON stored beside an entry's data.
type sidecar struct {
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
	MediaType string        `json:"mediaType,omitempty"`
	Scopes    []string      `json:"scopes,omitempty"`
}

// encodeSidecar encodes the sidecar of an entry; scopes are sorted (stable
// files: same content, same bytes).
func encodeSidecar(info Info, scopes []string) ([]byte, error) {
	return json.Marshal(sidecar{Digest: info.Digest, Size: info.Size, MediaType: info.MediaType, Scopes: scopes})
}

// parseSidecar decodes a sidecar and checks that it describes want.
func parseSidecar(b []byte, want digest.Digest) (sidecar, error) {
	var sc sidecar
	if len(b) > maxMetaFile {
		return sc, errors.New("sidecar too large")
	}
	if err := strictUnmarshal(b, &sc); err != nil {
		return sc, fmt.Errorf("sidecar: %w", err)
	}
	if sc.Digest != want {
		return sc, fmt.Errorf("sidecar is for %q, not %s", string(sc.Digest), want)
	}
	if sc.Size < 0 {
		return sc, fmt.Errorf("sidecar: negative size %d", sc.Size)
	}
	return sc, nil
}

// tagRecord is the JSON of a tag record, on disk and in the shared tier.
// Key is stored so that a (practically impossible) hash collision of two
// keys is detected, not served.
type tagRecord struct {
	Key       string        `json:"key"`
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType,omitempty"`
	Size      int64         `json:"size"`
	Checked   time.Time     `json:"checked"`
}

// MarshalTagRecord encodes the record of key, as the store writes it and
// as a Remote should keep it.
func MarshalTagRecord(key string, t Tag) ([]byte, error) {
	return json.Marshal(tagRecord{Key: key, Digest: t.Digest, MediaType: t.MediaType, Size: t.Size, Checked: t.Checked})
}

// UnmarshalTagRecord decodes what MarshalTagRecord encoded for key: a
// record with unknown fields, or one that belongs to another key, is an
// error. The tag it holds is not checked; Store.Tag and Store.RemoteTag
// check it before use.
func UnmarshalTagRecord(b []byte, key string) (Tag, error) {
	var r tagRecord
	if err := strictUnmarshal(b, &r); err != nil {
		return Tag{}, err
	}
	if r.Key != key {
		return Tag{}, errors.New("it belongs to another key")
	}
	return Tag{Digest: r.Digest, MediaType: r.MediaType, Size: r.Size, Checked: r.Checked}, nil
}

// parseTag decodes a tag file and checks that it belongs to key and holds
// a valid tag.
func parseTag(b []byte, key string) (Tag, error) {
	if len(b) > maxMetaFile {
		return Tag{}, errors.New("tag file too large")
	}
	t, err := UnmarshalTagRecord(b, key)
	if err != nil {
		return Tag{}, fmt.Errorf("tag file: %w", err)
	}
	if err := checkDigest(t.Digest); err != nil {
		return Tag{}, err
	}
	if t.Size < 0 {
		return Tag{}, fmt.Errorf("tag file: negative size %d", t.Size)
	}
	return t, nil
}

// strictUnmarshal decodes exactly one JSON object with known fields only.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}
