package registry

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
)

// Error codes of the distribution spec (and the two distribution itself
// adds for throttling and unavailability).
const (
	CodeNameInvalid     = "NAME_INVALID"
	CodeNameUnknown     = "NAME_UNKNOWN"
	CodeDigestInvalid   = "DIGEST_INVALID"
	CodeManifestInvalid = "MANIFEST_INVALID"
	CodeManifestUnknown = "MANIFEST_UNKNOWN"
	CodeBlobUnknown     = "BLOB_UNKNOWN"
	CodeTagInvalid      = "TAG_INVALID"
	CodeUnsupported     = "UNSUPPORTED"
	CodeUnauthorized    = "UNAUTHORIZED"
	CodeDenied          = "DENIED"
	CodeTooManyRequests = "TOOMANYREQUESTS"
	CodeUnavailable     = "UNAVAILABLE"
	CodeRangeInvalid    = "RANGE_INVALID"
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

// errNameInvalid and the constructors below build the errors that
// ParsePath answers for malformed requests.
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
	body := e.body()
	setErrorHeader(w.Header(), len(body))
	w.WriteHeader(e.Status)
	_, _ = w.Write(body)
}

// response is e as an upstream answer, for the request path to relay like
// any other (an upstream failure the client must see as a registry
// error, not in the form the failing host chose).
func (e *Error) response() *http.Response {
	body := e.body()
	h := http.Header{}
	setErrorHeader(h, len(body))
	return &http.Response{StatusCode: e.Status, Header: h, ContentLength: int64(len(body)), Body: io.NopCloser(bytes.NewReader(body))}
}

func (e *Error) body() []byte {
	body, _ := json.Marshal(map[string]any{"errors": []map[string]any{{
		"code":    e.Code,
		"message": e.Message,
		"detail":  e.Detail,
	}}})
	return body
}

func setErrorHeader(h http.Header, size int) {
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(size))
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
}
