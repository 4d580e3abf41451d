package registry

// The gates of a private site, in front of the request path: proxy
// accounts (who may use the proxy at all) and repository rules (which
// repositories it serves). Both answer before anything goes upstream or
// comes out of the cache.

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddy-dockerproxy/dockerproxy/accounts"
	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// accountOf reports whether grant is a login of one of the site's proxy
// accounts, as it is now (a removed account or a changed password ends
// its tokens), and tells OnAccount who the request is.
func (p *Proxy) accountOf(r *http.Request, grant tokenauth.Grant) bool {
	if grant.Account == "" || !grant.Anonymous() || !p.Accounts.Valid(grant.Account, grant.AccountTag) {
		return false
	}
	p.noteAccount(r, grant.Account)
	return true
}

func (p *Proxy) noteAccount(r *http.Request, name string) {
	if p.OnAccount != nil {
		p.OnAccount(r, name)
	}
}

// writeAccountChallenge answers a request without a valid account token:
// 401 UNAUTHORIZED with the proxy's challenge, "invalid_token" for a
// bearer token that is not (or no longer) an account's.
func (p *Proxy) writeAccountChallenge(w http.ResponseWriter, r *http.Request, t target, path APIPath) {
	errParam := ""
	if isBearer(r.Header.Get("Authorization")) {
		errParam = "invalid_token"
	}
	p.writeChallenge(w, r, t, path, errParam)
}

// loginAccount verifies the proxy account credentials of a token request.
// It returns the request as the account's (credentials dropped: they are
// the proxy's, never the upstream's), or answers it and returns false.
func (p *Proxy) loginAccount(w http.ResponseWriter, r *http.Request, treq tokenauth.TokenRequest) (tokenauth.TokenRequest, bool) {
	creds := treq.Credentials()
	if creds == nil {
		writeTokenError(w, http.StatusUnauthorized, "invalid_client", "authentication required: log in with an account of this proxy", 0)
		return treq, false
	}
	addr := ""
	if p.ClientAddr != nil {
		addr = p.ClientAddr(r)
	}
	tag, err := p.Accounts.Check(r.Context(), addr, creds.Username, creds.Secret)
	var slow *accounts.SlowDownError
	switch {
	case err == nil:
		p.noteAccount(r, creds.Username)
		return treq.AsAccount(creds.Username, tag), true
	case errors.Is(err, accounts.ErrRefused):
		writeTokenError(w, http.StatusUnauthorized, "invalid_grant", "wrong user name or password", 0)
	case errors.As(err, &slow):
		writeTokenError(w, http.StatusTooManyRequests, "slow_down", err.Error(), int(slow.RetryAfter.Seconds())+1)
	case errors.Is(err, accounts.ErrBusy), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		writeTokenError(w, http.StatusServiceUnavailable, "temporarily_unavailable", accounts.ErrBusy.Error(), 1)
	default:
		writeTokenError(w, http.StatusInternalServerError, "server_error", "could not check the login", 0)
	}
	return treq, false
}

// writeTokenError answers a token request in the token endpoint's format
// (which carries the registry's error too), with Retry-After if given.
func writeTokenError(w http.ResponseWriter, status int, code, description string, retryAfter int) {
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	}
	(&tokenauth.RequestError{Status: status, Code: code, Description: description}).Write(w)
}

// refuseScopes answers a token request with a scope for a repository the
// rules refuse, and returns true; normalize is the upstream's scope
// normalisation (nil: none).
func (p *Proxy) refuseScopes(w http.ResponseWriter, t target, treq tokenauth.TokenRequest, normalize func(tokenauth.Scope) tokenauth.Scope) bool {
	for _, s := range treq.Scopes() {
		if !strings.HasPrefix(s.Type, "repository") {
			continue
		}
		if normalize != nil {
			s = normalize(s)
		}
		if rerr := p.Rules.Refuse(t.up, s.Name); rerr != nil {
			WriteError(w, rerr)
			return true
		}
	}
	return false
}
