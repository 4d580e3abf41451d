package registry

// Schema 1 signed manifests (application/vnd.docker.distribution.manifest.v1+prettyjws).
// Distribution 2.x converts a schema 2 manifest to one on the fly for a
// client that sends no Accept, signing it anew each time. Its digest, in
// Docker-Content-Digest, is that of the signed payload: the manifest
// without its "signatures", which the JWS "protected" header lets anyone
// rebuild (the first formatLength bytes, then formatTail). The bytes served
// differ from one request to the next, so such a manifest is passed
// through, never stored under a digest its bytes do not hash to.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
)

// mediaTypeSchema1Signed is the Content-Type of a schema 1 signed manifest.
const mediaTypeSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"

// schema1Payload returns the payload of a schema 1 signed manifest, the
// bytes its digest is of; ok is false when body is not one (no
// signatures, or signatures whose protected headers do not rebuild one
// payload inside the body).
func schema1Payload(body []byte) (payload []byte, ok bool) {
	var env struct {
		SchemaVersion int `json:"schemaVersion"`
		Signatures    []struct {
			Protected string `json:"protected"`
		} `json:"signatures"`
	}
	if json.Unmarshal(body, &env) != nil || env.SchemaVersion != 1 || len(env.Signatures) == 0 {
		return nil, false
	}
	for _, sig := range env.Signatures {
		p, ok := jwsPayload(body, sig.Protected)
		if !ok || payload != nil && !bytes.Equal(p, payload) {
			return nil, false // every signature signs the same payload
		}
		payload = p
	}
	return payload, true
}

// jwsPayload rebuilds the payload from one signature's protected header.
func jwsPayload(body []byte, protected string) ([]byte, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(protected, "="))
	if err != nil {
		return nil, false
	}
	var h struct {
		FormatLength *int    `json:"formatLength"`
		FormatTail   *string `json:"formatTail"`
	}
	if json.Unmarshal(raw, &h) != nil || h.FormatLength == nil || h.FormatTail == nil {
		return nil, false
	}
	n := *h.FormatLength
	if n <= 0 || n > len(body) {
		return nil, false
	}
	tail, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(*h.FormatTail, "="))
	if err != nil {
		return nil, false
	}
	payload := make([]byte, 0, n+len(tail))
	payload = append(append(payload, body[:n]...), tail...)
	// The payload is the manifest as signed: JSON, not a cut in the middle.
	if !json.Valid(payload) {
		return nil, false
	}
	return payload, true
}

// manifestInvalidError: the upstream's manifest is not what it says it
// is. The client gets MANIFEST_INVALID, not "upstream unavailable":
// asking again would get the same.
type manifestInvalidError struct{ msg string }

func (e *manifestInvalidError) Error() string { return e.msg }

func errManifestInvalid(format string, args ...any) error {
	return &manifestInvalidError{msg: fmt.Sprintf(format, args...)}
}

// passThroughReply is a manifest served as fetched and not kept.
func passThroughReply(m manifest) *bufferedReply {
	return manifestReply(m, resultSchema1)
}

// isSchema1Signed reports whether a Content-Type names a schema 1 signed
// manifest.
func isSchema1Signed(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), mediaTypeSchema1Signed)
}
