package registry

// Outbound: a client request as the upstream request the proxy makes,
// with only the path, query and headers the upstream needs.

import (
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// forward sends the request upstream as grant's identity and relays the
// answer as res (see relay).
func (c *pull) forward(res Result) {
	resp, err := c.do(outboundFor(c.r, c.path, c.r.Method))
	if err != nil {
		c.writeUpstreamError(err)
		return
	}
	c.relay(resp, res)
}

// outboundFor is req as an upstream request with method, carrying the
// client headers it needs.
func outboundFor(r *http.Request, req APIPath, method string) outbound {
	return outbound{
		method: method,
		path:   upstreamPath(req) + upstreamQuery(r, req),
		header: forwardHeaders(r, req),
		scope:  "repository:" + req.Name + ":pull",
		kind:   req.Kind,
	}
}

// upstreamPath is the request's path on the upstream.
func upstreamPath(req APIPath) string {
	switch req.Kind {
	case KindManifest:
		return "/v2/" + req.Name + "/manifests/" + req.Reference()
	case KindBlob:
		return "/v2/" + req.Name + "/blobs/" + req.Digest.String()
	case KindTags:
		return "/v2/" + req.Name + "/tags/list"
	case KindReferrers:
		return "/v2/" + req.Name + "/referrers/" + req.Digest.String()
	}
	return "/v2/"
}

// upstreamQuery passes on the query parameters the API defines for the kind
// (pagination, artifact filters); ns= is the proxy's, not the upstream's.
func upstreamQuery(r *http.Request, req APIPath) string {
	var params []string
	switch req.Kind {
	case KindTags:
		params = []string{"n", "last"}
	case KindReferrers:
		params = []string{"artifactType"}
	default:
		return ""
	}
	in := r.URL.Query()
	out := url.Values{}
	for _, k := range params {
		if v, ok := in[k]; ok {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return ""
	}
	return "?" + out.Encode()
}

// forwardHeaders are the client headers an upstream needs: Accept for
// manifests and referrers, Range for blobs, the client's User-Agent. Never
// the client's Authorization: the identity decides that. Malformed values
// are not passed on: an Accept goes as normaliseAccept makes it, exactly as
// it keys records, and a Range that does not parse is ignored (RFC 9110
// lets a server do that).
func forwardHeaders(r *http.Request, req APIPath) http.Header {
	h := http.Header{}
	if ua := r.Header.Get("User-Agent"); ua != "" {
		h.Set("User-Agent", ua)
	}
	switch req.Kind {
	case KindManifest, KindReferrers:
		if accept := acceptKey(r.Header.Values("Accept")); accept != "" {
			h.Set("Accept", accept)
		}
	case KindBlob:
		if v := r.Header.Get("Range"); validByteRanges(v) {
			h.Set("Range", v)
		}
	}
	return h
}

// byteRanges matches the form of a Range header of byte ranges: optional
// whitespace around commas is SP or HTAB only (anything else is no valid
// header value to send).
var byteRanges = regexp.MustCompile(`^bytes=(?:\d+-\d*|-\d+)(?:[ \t]*,[ \t]*(?:\d+-\d*|-\d+))*$`)

// validByteRanges reports whether v is a byte-range set that may go
// upstream: of byteRanges' form, and no range ending before it starts
// (RFC 9110 calls such a set invalid; a server may answer it with 416 or
// with the whole blob). Positions too large for an int64 are dropped too.
func validByteRanges(v string) bool {
	if !byteRanges.MatchString(v) {
		return false
	}
	for spec := range strings.SplitSeq(strings.TrimPrefix(v, "bytes="), ",") {
		first, last, _ := strings.Cut(strings.Trim(spec, " \t"), "-")
		if first == "" || last == "" {
			if _, err := strconv.ParseInt(first+last, 10, 64); err != nil {
				return false
			}
			continue
		}
		f, err1 := strconv.ParseInt(first, 10, 64)
		l, err2 := strconv.ParseInt(last, 10, 64)
		if err1 != nil || err2 != nil || l < f {
			return false
		}
	}
	return true
}
