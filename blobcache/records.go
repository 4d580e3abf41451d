package blobcache

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

func encodeSidecar(info Info, scopes map[string]struct{}) ([]byte, error) {
	sc := sidecar{Digest: info.Digest, Size: info.Size, MediaType: info.MediaType}
	if len(scopes) > 0 {
		sc.Scopes = sortedScopes(scopes) // stable files: same content, same bytes
	}
	return json.Marshal(sc)
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

// tagRecord is the JSON of a tag file. Key is stored so that a (practically
// impossible) hash collision of two keys is detected, not served.
type tagRecord struct {
	Key       string        `json:"key"`
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType,omitempty"`
	Size      int64         `json:"size"`
	Checked   time.Time     `json:"checked"`
}

// parseTag decodes a tag file and checks it belongs to key.
func parseTag(b []byte, key string) (Tag, error) {
	if len(b) > maxMetaFile {
		return Tag{}, errors.New("tag file too large")
	}
	var r tagRecord
	if err := strictUnmarshal(b, &r); err != nil {
		return Tag{}, fmt.Errorf("tag file: %w", err)
	}
	if r.Key != key {
		return Tag{}, errors.New("tag file belongs to another key")
	}
	if err := checkDigest(r.Digest); err != nil {
		return Tag{}, err
	}
	if r.Size < 0 {
		return Tag{}, fmt.Errorf("tag file: negative size %d", r.Size)
	}
	return Tag{Digest: r.Digest, MediaType: r.MediaType, Size: r.Size, Checked: r.Checked}, nil
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
