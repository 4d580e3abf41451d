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

// Request is a parsed and validated registry API path.
type Request struct {
	Kind Kind
	// Name is the repository (path form, no registry host): library/alpine.
	Name string
	// Tag is set for manifest requests by tag.
	Tag string
	// Digest is set for manifests by digest, blobs and referrers.
	Digest digest.Digest
}

// Reference returns the tag or the digest of a manifest request.
func (r Request) Reference() string {
	if r.Tag != "" {
		return r.Tag
	}
	return r.Digest.String()
}

// maxNameLength is the limit of the distribution reference grammar.
const maxNameLength = 255

// pathComponent and repositoryName follow the distribution spec's grammar
// for a repository name as it appears in the API path: lower-case components
// separated by '/', each separated internally by '.', '_', '__' or dashes.
var repositoryName = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)

var anchoredTag = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)

// ParsePath classifies a request path and validates the repository name,
// tag and digest in it. It never looks at anything but the path, so it can
// run before any upstream is contacted. method is used only to refuse
// writes: the proxy is read-only.
func ParsePath(method, path string) (Request, *Error) {
	if path == "/v2" || path == "/v2/" {
		return Request{Kind: KindBase}, nil
	}
	if path == "/v2/auth" || path == "/v2/auth/" {
		return Request{Kind: KindAuth}, nil
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return Request{}, &Error{Status: http.StatusNotFound, Code: CodeUnsupported, Message: "not a registry API path: " + path}
	}
	if rest == "_catalog" {
		return Request{}, &Error{Status: http.StatusNotFound, Code: CodeUnsupported, Message: "the catalog is not available through a registry proxy"}
	}
	// The name may contain slashes, so find the last API keyword.
	for _, kw := range []string{"/manifests/", "/blobs/uploads", "/blobs/", "/tags/list", "/referrers/"} {
		i := strings.LastIndex(rest, kw)
		if i < 0 {
			continue
		}
		name, arg := rest[:i], rest[i+len(kw):]
		if err := validateName(name); err != nil {
			return Request{}, err
		}
		switch kw {
		case "/blobs/uploads":
			return Request{}, errUnsupported("this registry is a read-only pull-through cache: pushes are not accepted")
		case "/manifests/":
			if method != http.MethodGet && method != http.MethodHead {
				return Request{}, errUnsupported("this registry is a read-only pull-through cache: only GET and HEAD of manifests")
			}
			if strings.Contains(arg, ":") {
				d, err := parseDigest(arg)
				if err != nil {
					return Request{}, err
				}
				return Request{Kind: KindManifest, Name: name, Digest: d}, nil
			}
			if !anchoredTag.MatchString(arg) {
				return Request{}, errTagInvalid(arg)
			}
			return Request{Kind: KindManifest, Name: name, Tag: arg}, nil
		case "/blobs/":
			d, err := parseDigest(arg)
			if err != nil {
				return Request{}, err
			}
			if method != http.MethodGet && method != http.MethodHead {
				return Request{}, errUnsupported("this registry is a read-only pull-through cache: only GET and HEAD of blobs")
			}
			return Request{Kind: KindBlob, Name: name, Digest: d}, nil
		case "/tags/list":
			if arg != "" {
				break
			}
			return Request{Kind: KindTags, Name: name}, nil
		case "/referrers/":
			d, err := parseDigest(arg)
			if err != nil {
				return Request{}, err
			}
			return Request{Kind: KindReferrers, Name: name, Digest: d}, nil
		}
	}
	return Request{}, &Error{Status: http.StatusNotFound, Code: CodeUnsupported, Message: "unknown registry API path: " + path}
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
