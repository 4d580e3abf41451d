package registry

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Kind is what a registry API request asks for.
type Kind int

const (
	KindBase      Kind = iota + 1 // GET /v2/
	KindAuth                      // /v2/auth: the proxy's token endpoint
	KindManifest                  // /v2/<name>/manifests/<reference>
	KindBlob                      // /v2/<name>/blobs/<digest>
	KindTags                      // /v2/<name>/tags/list
	KindReferrers                 // /v2/<name>/referrers/<digest>
)

func (k Kind) String() string {
	switch k {
	case KindBase:
		return "base"
	case KindAuth:
		return "auth"
	case KindManifest:
		return "manifest"
	case KindBlob:
		return "blob"
	case KindTags:
		return "tags"
	case KindReferrers:
		return "referrers"
	}
	return "unknown"
}

// APIPath is a parsed and validated registry API path.
type APIPath struct {
	Kind Kind
	// Name is the repository (path form, no registry host): library/alpine.
	Name string
	// Tag is set for manifest requests by tag.
	Tag string
	// Digest is set for manifests by digest, blobs and referrers.
	Digest digest.Digest
}

// Reference returns the tag or the digest of a manifest request.
func (r APIPath) Reference() string {
	if r.Tag != "" {
		return r.Tag
	}
	return r.Digest.String()
}

// maxNameLength is the limit of the distribution reference grammar.
const maxNameLength = 255

// repositoryName follows the distribution spec's grammar for a repository
// name as it appears in the API path: lower-case components separated by
// '/', each separated internally by '.', '_', '__' or dashes.
var repositoryName = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)

var anchoredTag = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)

// ParsePath classifies a request path and validates the repository name,
// tag and digest in it. It never looks at anything but the path, so it can
// run before any upstream is contacted. method is used only to refuse
// writes: the proxy is read-only.
func ParsePath(method, path string) (APIPath, *Error) {
	if path == "/v2" || path == "/v2/" {
		return APIPath{Kind: KindBase}, nil
	}
	if path == "/v2/auth" || path == "/v2/auth/" {
		return APIPath{Kind: KindAuth}, nil
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return APIPath{}, &Error{Status: http.StatusNotFound, Code: CodeUnsupported, Message: "not a registry API path: " + path}
	}
	if rest == "_catalog" {
		return APIPath{}, &Error{Status: http.StatusNotFound, Code: CodeUnsupported, Message: "the catalog is not available through a registry proxy"}
	}
	// The name may contain slashes, and even components called
	// "manifests" or "blobs": decide the kind from the end of the path,
	// where the reference (a tag or a digest, never with a slash) is.
	if method != http.MethodGet && method != http.MethodHead {
		if strings.Contains(rest, "/blobs/uploads") {
			return APIPath{}, errUnsupported("this registry is a read-only pull-through cache: pushes are not accepted")
		}
		return APIPath{}, errUnsupported("this registry is a read-only pull-through cache: only GET and HEAD")
	}
	if name, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		if err := validateName(name); err != nil {
			return APIPath{}, err
		}
		return APIPath{Kind: KindTags, Name: name}, nil
	}
	i := strings.LastIndexByte(rest, '/')
	j := strings.LastIndexByte(rest[:max(i, 0)], '/')
	if i < 0 || j < 0 {
		return APIPath{}, &Error{Status: http.StatusNotFound, Code: CodeUnsupported, Message: "unknown registry API path: " + path}
	}
	name, keyword, arg := rest[:j], rest[j+1:i], rest[i+1:]
	if keyword == "uploads" && strings.HasSuffix(name, "/blobs") || keyword == "blobs" && arg == "uploads" {
		return APIPath{}, errUnsupported("this registry is a read-only pull-through cache: pushes are not accepted")
	}
	kind, ok := map[string]Kind{"manifests": KindManifest, "blobs": KindBlob, "referrers": KindReferrers}[keyword]
	if !ok {
		return APIPath{}, &Error{Status: http.StatusNotFound, Code: CodeUnsupported, Message: "unknown registry API path: " + path}
	}
	if err := validateName(name); err != nil {
		return APIPath{}, err
	}
	req := APIPath{Kind: kind, Name: name}
	if kind == KindManifest && !strings.Contains(arg, ":") {
		if !anchoredTag.MatchString(arg) {
			return APIPath{}, errTagInvalid(arg)
		}
		req.Tag = arg
		return req, nil
	}
	d, err := parseDigest(arg)
	if err != nil {
		return APIPath{}, err
	}
	req.Digest = d
	return req, nil
}

func validateName(name string) *Error {
	switch {
	case name == "":
		return errNameInvalid(name, "empty")
	case len(name) > maxNameLength:
		return errNameInvalid(name, "longer than 255 characters")
	case !repositoryName.MatchString(name):
		return errNameInvalid(name, "must be lower-case path components of letters and digits separated by '/', '.', '_' or '-'")
	}
	return nil
}

func parseDigest(s string) (digest.Digest, *Error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", errDigestInvalid(s, err.Error())
	}
	return d, nil
}
