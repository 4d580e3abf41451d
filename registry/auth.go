package registry

// Authentication: the proxy's challenges pointing at its own realm, GET
// /v2/, and the token endpoint.

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/tokenauth"
)

// realm is the URL of the proxy's token endpoint as this client reaches it.
func (p *Proxy) realm(r *http.Request, t target) string {
	u := url.URL{Scheme: p.Scheme(r), Host: r.Host, Path: "/v2/auth"}
	if t.prefix != "/v2/" {
		u.Path = t.prefix + "auth"
	}
	if t.ns != "" {
		u.RawQuery = url.Values{"ns": {t.ns}}.Encode()
	}
	return u.String()
}

// writeChallenge answers 401 with the proxy's realm and the upstream's
// service name, so clients fetch their token from the proxy.
func (p *Proxy) writeChallenge(w http.ResponseWriter, r *http.Request, t target, req APIPath, errParam string) {
	ch := p.challengeFor(r, t, req, errParam)
	w.Header().Set("Www-Authenticate", ch.String())
	WriteError(w, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Message: "authentication required"})
}

// challengeError is the error parameter of the upstream's challenge in h
// (invalid_token, insufficient_scope), for the proxy's own challenge.
func challengeError(h http.Header) string {
	if ch := pickChallenge(h); ch != nil {
		return ch.Params["error"]
	}
	return ""
}

func (p *Proxy) challengeFor(r *http.Request, t target, req APIPath, errParam string) tokenauth.Challenge {
	params := map[string]string{"realm": p.realm(r, t), "service": t.up.Name}
	if ch := p.Upstream.learnt(t.up); ch != nil && ch.Service() != "" {
		params["service"] = ch.Service()
	}
	if req.Name != "" {
		params["scope"] = "repository:" + req.Name + ":pull"
	}
	if errParam != "" {
		params["error"] = errParam
	}
	return tokenauth.Challenge{Scheme: "Bearer", Params: params}
}

// serveBase answers GET /v2/ as a registry with token authentication
// does: 200 to one of the proxy's tokens (Identify refused any other),
// else the upstream's challenge pointing at the proxy's realm, so that
// docker login and pulls ask the proxy for tokens. Basic credentials are
// checked at the realm, not here: answering them 200 would tell a client
// that any password logs in. Only a client without credentials, of an
// upstream that asks for none, gets 200 anonymously.
func (p *Proxy) serveBase(w http.ResponseWriter, r *http.Request, t target) {
	switch auth := r.Header.Get("Authorization"); {
	case isBearer(auth):
	case auth != "":
		p.writeChallenge(w, r, t, APIPath{}, "")
		return
	default:
		ch, err := p.Upstream.Challenge(r.Context(), t.up)
		if err != nil {
			// Offline: still point the client at our realm; the
			// cache can serve anonymous pulls.
			p.Logger.Debug("upstream challenge unavailable", zap.String("upstream", t.up.Name), zap.Error(err))
		}
		if err != nil || ch != nil {
			p.writeChallenge(w, r, t, APIPath{}, "")
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "{}")
}

// isBearer reports whether an Authorization value is a bearer token.
func isBearer(authorization string) bool {
	scheme, _, _ := strings.Cut(authorization, " ")
	return strings.EqualFold(scheme, "Bearer")
}

// serveToken runs the proxy's token endpoint for t's upstream. The whole
// request is validated first: a malformed one is answered without the
// upstream being asked anything, not even for its challenge.
func (p *Proxy) serveToken(w http.ResponseWriter, r *http.Request, t target) {
	treq, rerr := tokenauth.ParseRequest(r)
	if rerr != nil {
		rerr.Write(w)
		return
	}
	// The upstream as the token endpoint sees it: its realm's challenge and
	// the rules for its scopes and credentials.
	endpointUp := tokenauth.Upstream{ID: t.up.String()}
	if t.up.IsDockerHub() {
		endpointUp.NormalizeScope = func(s tokenauth.Scope) tokenauth.Scope {
			if strings.HasPrefix(s.Type, "repository") && !strings.Contains(s.Name, "/") {
				s.Name = "library/" + s.Name
			}
			return s
		}
	}
	if p.Accounts != nil {
		// A private site: the credentials are a proxy account's. The
		// token carries none upstream, so the upstream's challenge
		// does not matter.
		var ok bool
		if treq, ok = p.loginAccount(w, r, treq); !ok {
			return
		}
		if !p.refuseScopes(w, t, treq, endpointUp.NormalizeScope) {
			p.Auth.Serve(w, r, treq, endpointUp)
		}
		return
	}
	if p.refuseScopes(w, t, treq, endpointUp.NormalizeScope) {
		return
	}
	ch, err := p.Upstream.Challenge(r.Context(), t.up)
	if err != nil {
		endpointUp.Unreachable = err
	}
	endpointUp.Challenge = ch
	endpointUp.CheckBasic = func(ctx context.Context, authorization string) error {
		return p.Upstream.CheckBasic(ctx, t.up, authorization)
	}
	// The realm gets a client's credentials: it is held to the
	// upstream's netguard policy like any host the upstream names.
	p.Auth.Serve(w, r.WithContext(p.Upstream.guard(p.Upstream.observing(r.Context(), t.up, tokenauth.Grant{}, KindAuth), t.up)), treq, endpointUp)
}
