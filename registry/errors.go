package registry

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Error codes of the distribution spec (and the two distribution itself
// adds for throttling and unavailability).
const (
	CodeNameInvalid      = "NAME_INVALID"
	CodeNameUnknown      = "NAME_UNKNOWN"
	CodeDigestInvalid    = "DIGEST_INVALID"
	CodeManifestInvalid  = "MANIFEST_INVALID"
	CodeManifestUnknown  = "MANIFEST_UNKNOWN"
	CodeBlobUnknown      = "BLOB_UNKNOWN"
	CodeTagInvalid       = "TAG_INVALID"
	CodeUnsupported      = "UNSUPPORTED"
	CodeUnauthorized     = "UNAUTHORIZED"
	CodeDenied           = "DENIED"
	CodeTooManyRequests  = "TOOMANYREQUESTS"
	CodeUnavailable      = "UNAVAILABLE"
	CodeRangeInvalid     = "RANGE_INVALID"
	CodeSizeInvalid      = "SIZE_INVALID"
	CodeUpstreamTimedOut = "UNAVAILABLE"
)

// Error is a registry API error: an HTTP status and one entry of the
// {"errors":[...]} body that registry clients print.
type Error struct {
	Status  int
	Code    string
	Message string
	Detail  any
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf-style constructors for the common cases.
func errNameInvalid(name, why string) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeNameInvalid, Message: "invalid repository name: " + why, Detail: map[string]string{"name": name}}
}

func errDigestInvalid(d, why string) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeDigestInvalid, Message: "invalid digest: " + why, Detail: map[string]string{"digest": d}}
}

func errTagInvalid(tag string) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeTagInvalid, Message: "invalid tag or reference", Detail: map[string]string{"reference": tag}}
}

func errUnsupported(msg string) *Error {
	return &Error{Status: http.StatusMethodNotAllowed, Code: CodeUnsupported, Message: msg}
}

// WriteError writes e in the registry's JSON error format.
func WriteError(w http.ResponseWriter, e *Error) {
	body, _ := json.Marshal(map[string]any{"errors": []map[string]any{{
		"code":    e.Code,
		"message": e.Message,
		"detail":  e.Detail,
	}}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.WriteHeader(e.Status)
	_, _ = w.Write(body)
}
