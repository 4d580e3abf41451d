package registry

import (
	"errors"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

// FillFailureReasons are the reasons a blob fill fails on its upstream's
// body, as logged and counted: a bounded set, fit for a metric label.
var FillFailureReasons = []string{"digest_mismatch", "short_body", "stalled", "read_error"}

// fillFailureReason names why an upstream body failed a fill.
func fillFailureReason(err error) string {
	switch {
	// First: a body that ended early is also a count mismatch.
	case errors.Is(err, blobcache.ErrShortBody):
		return "short_body"
	case errors.Is(err, blobcache.ErrStalled):
		return "stalled"
	case errors.Is(err, blobcache.ErrDigestMismatch):
		return "digest_mismatch"
	}
	return "read_error"
}

// fillFailed reports one fill that the upstream's body failed. The store
// calls it once per fill, however many clients read it (each of them has
// its connection aborted, which logs nothing here). Without this, bad bytes
// from an upstream would leave no trace but clients' retries. The fields
// name the upstream by its configured name and the blob by digest: never
// the URL the bytes came from, which for a CDN redirect is signed.
func (p *Proxy) fillFailed(up Upstream, d digest.Digest, err error) {
	reason := fillFailureReason(err)
	p.Logger.Warn("blob fill failed on the upstream's bytes; its clients were cut off and nothing was kept",
		zap.String("upstream", up.Name),
		zap.String("digest", d.String()),
		zap.String("reason", reason),
		zap.Error(err))
	if p.OnFillFailure != nil {
		p.OnFillFailure(up.Name, reason)
	}
}
