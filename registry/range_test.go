package registry

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// validByteRangeSet reports whether v is a Range header an upstream may be
// sent (RFC 9110 14.1.1 and 14.2): "bytes=" and a list of byte-range-spec
// ("first-last" with first <= last, "first-") or suffix-range-spec
// ("-length"), with optional SP/HTAB around the commas and no empty
// elements. Written apart from the code under test, from the grammar.
func validByteRangeSet(v string) bool {
	set, ok := strings.CutPrefix(v, "bytes=")
	if !ok {
		return false
	}
	digits := func(s string) bool {
		if s == "" {
			return false
		}
		for i := 0; i < len(s); i++ {
			if s[i] < '0' || s[i] > '9' {
				return false
			}
		}
		return true
	}
	for _, spec := range strings.Split(set, ",") {
		spec = strings.Trim(spec, " \t")
		first, last, ok := strings.Cut(spec, "-")
		switch {
		case !ok:
			return false
		case first == "":
			if !digits(last) {
				return false
			}
		case !digits(first) || last != "" && !digits(last):
			return false
		case last != "" && decimalLess(last, first):
			return false // "A byte-range-spec is invalid if the last-pos value ... is less than the first-pos"
		}
	}
	return true
}

// decimalLess compares two strings of digits of any length.
func decimalLess(a, b string) bool {
	a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

// servedLastByte is the index of the last blob byte a response serves
// (-1 if none): what http.ServeContent, which serves cached hits and
// fills, makes of a Range for a blob of size bytes.
func servedLastByte(t *testing.T, rangeHeader string, size int64) int64 {
	req := httptest.NewRequest("GET", "/", nil)
	req.Header["Range"] = []string{rangeHeader}
	rec := httptest.NewRecorder()
	http.ServeContent(rec, req, "", time.Time{}, bytes.NewReader(make([]byte, size)))
	resp := rec.Result()
	switch resp.StatusCode {
	case http.StatusOK:
		return size - 1
	case http.StatusPartialContent:
	default:
		return -1
	}
	last := int64(-1)
	lastOf := func(contentRange string) {
		// "bytes first-last/size"
		r, ok := strings.CutPrefix(contentRange, "bytes ")
		if !ok {
			t.Fatalf("Content-Range %q", contentRange)
		}
		r, _, _ = strings.Cut(r, "/")
		_, l, _ := strings.Cut(r, "-")
		n, err := strconv.ParseInt(l, 10, 64)
		if err != nil {
			t.Fatalf("Content-Range %q: %v", contentRange, err)
		}
		last = max(last, n)
	}
	if cr := resp.Header.Get("Content-Range"); cr != "" {
		lastOf(cr)
		return last
	}
	_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("206 without Content-Range, Content-Type %q", resp.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			return last
		}
		if err != nil {
			t.Fatalf("multipart: %v", err)
		}
		lastOf(part.Header.Get("Content-Range"))
	}
}

// FuzzRangeHeader: whatever a client sends as Range, nothing panics; the
// header forwarded upstream is dropped or a valid byte-range set; and the
// byte a fill in progress holds back until the blob is verified
// (rangesEnd) is one the response must send, so that no response of
// unverified bytes ends cleanly.
func FuzzRangeHeader(f *testing.F) {
	for _, s := range []string{
		"bytes=0-99", "bytes=-500", "bytes=10-", "bytes=0-1, 5-9", "bytes=0-1,\t5-9",
		"bytes=5-3", "bytes=0-5,200-300", "bytes=-0", "bytes=0-0", "bytes=99-", "bytes=",
		"bytes=abc", "items=0-1", "bytes=0-1\r\nX: y", "bytes=0-1,,2-3", "bytes=0-1 ,\v2-3",
		"bytes=99999999999999999999-", "bytes=1-99999999999999999999", "Bytes=0-1",
	} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, rangeHeader string, size int64) {
		r := httptest.NewRequest("GET", "/v2/a/blobs/sha256:"+strings.Repeat("a", 64), nil)
		r.Header["Range"] = []string{rangeHeader}
		got := forwardHeaders(r, APIPath{Kind: KindBlob}).Values("Range")
		switch {
		case len(got) > 1:
			t.Fatalf("Range %q forwarded as %q", rangeHeader, got)
		case len(got) == 1 && !validByteRangeSet(got[0]):
			t.Fatalf("Range %q forwarded as %q: not a valid byte-range set", rangeHeader, got[0])
		}

		size = size % (1 << 20)
		if size <= 0 {
			return // a fill of unknown size serves a Range whole, after the verdict
		}
		end := rangesEnd(rangeHeader, size)
		if end < 0 || end > size {
			t.Fatalf("rangesEnd(%q, %d) = %d", rangeHeader, size, end)
		}
		held := end - 1 // the byte held back until the verdict
		if end == 0 {
			held = size - 1
		}
		if last := servedLastByte(t, rangeHeader, size); last >= 0 && last < held {
			t.Fatalf("Range %q on %d bytes: the response ends at byte %d, before byte %d, which waits for the verdict: it could end cleanly on unverified bytes", rangeHeader, size, last, held)
		}
	})
}
