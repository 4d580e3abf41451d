package tokenauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-dockerproxy/dockerproxy/netguard"
)

// Upstream is what the token endpoint needs to know of the upstream a
// request was routed to.
type Upstream struct {
	// ID binds issued tokens to this upstream (its base URL).
	ID string
	// Challenge is the upstream's own challenge, learnt from its 401 (never
	// from the request). Nil when the upstream needs no authentication or
	// could not be asked.
	Challenge *Challenge
	// NormalizeScope rewrites a scope's repository name for the upstream
	// (Docker Hub's library/ prefix). Nil leaves names as they are.
	NormalizeScope func(Scope) Scope
	// CheckBasic asks the upstream whether it accepts a Basic
	// Authorization header value; used for upstreams that challenge with
	// Basic instead of a token service.
	CheckBasic func(ctx context.Context, authorization string) error
	// Unreachable is set when the upstream could not be asked for its
	// challenge: anonymous clients still get a token (the cache may serve
	// them), clients with credentials are told to try later.
	Unreachable error
}

// Endpoint is the proxy's token service, served at /v2/auth.
type Endpoint struct {
	Sealer  *Sealer
	Fetcher *Fetcher
	// AnonymousLifetime is how long a token without client credentials
	// lives. Default 1h.
	AnonymousLifetime time.Duration
	// Accepted remembers the credentials the upstream accepted (by
	// Subject). While the upstream's token service cannot be reached,
	// credentials it accepted within OfflineWindow still get a token: such
	// a client keeps the access the upstream confirmed for it, served from
	// the cache, and nothing more. Nil: a private one.
	Accepted *Confirmations
	// Zero means the package's OfflineWindow.
	OfflineWindow time.Duration
	// Logger gets what clients are not told (internal addresses). Nil:
	// no log.
	Logger *zap.Logger

	once sync.Once
}

func (e *Endpoint) logger() *zap.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return zap.NewNop()
}

func (e *Endpoint) offlineWindow() time.Duration {
	if e.OfflineWindow > 0 {
		return e.OfflineWindow
	}
	return OfflineWindow
}

// OfflineWindow is how long what the upstream confirmed (credentials it
// accepted, a client's access to content) stays usable while the upstream
// cannot be asked: the proxy's stale-if-error for access, as tag records
// are for tags.
const OfflineWindow = 24 * time.Hour

func (e *Endpoint) recordAccepted(subject string, now time.Time) {
	e.accepted().Confirm(subject, now)
}

func (e *Endpoint) acceptedRecently(subject string, now time.Time) bool {
	return e.accepted().Within(subject, e.offlineWindow(), now)
}

func (e *Endpoint) accepted() *Confirmations {
	e.once.Do(func() {
		if e.Accepted == nil {
			e.Accepted = NewConfirmations(e.offlineWindow())
		}
	})
	return e.Accepted
}

// Identify returns the grant of a registry request: anonymous without an
// Authorization header (and for Basic credentials sent without a challenge,
// which the proxy does not use), the opened grant for one of the proxy's
// tokens, or ErrInvalidToken for any other or expired bearer token or a
// token with client credentials issued for another upstream.
func (e *Endpoint) Identify(r *http.Request, upstreamID string) (Grant, error) {
	h := r.Header.Get("Authorization")
	scheme, value, _ := strings.Cut(h, " ")
	if h == "" || !strings.EqualFold(scheme, "Bearer") {
		return Grant{Upstream: upstreamID}, nil
	}
	g, err := e.Sealer.Open(strings.TrimSpace(value), time.Now())
	if err != nil {
		return Grant{}, err
	}
	// A grant carrying a client's upstream credentials is good for its
	// upstream only. An anonymous one carries nothing to protect, and a
	// mirror host serves several upstreams (ghcr.io/... in the path) to a
	// client that got its token from the host's default route.
	if g.Upstream != upstreamID && !g.Anonymous() {
		return Grant{}, ErrInvalidToken
	}
	g.Upstream = upstreamID
	return g, nil
}

// Serve answers a token request that ParseRequest accepted, for the
// upstream up. Callers that must ask the upstream for its challenge do so
// between the two, so that a malformed request costs the upstream nothing.
func (e *Endpoint) Serve(w http.ResponseWriter, r *http.Request, treq TokenRequest, up Upstream) {
	scopes := make([]string, 0, len(treq.scopes))
	for _, s := range treq.scopes {
		if up.NormalizeScope != nil {
			s = up.NormalizeScope(s)
		}
		scopes = append(scopes, s.String())
	}

	now := time.Now()
	grant := Grant{Upstream: up.ID, Scopes: scopes, Account: treq.account, AccountTag: treq.accountTag}
	if treq.creds != nil {
		grant.Subject = e.Sealer.Subject(up.ID, *treq.creds)
	}
	switch {
	case treq.creds == nil || up.Challenge == nil && up.Unreachable == nil:
		// No credentials, or an upstream that asks for none: the proxy
		// serves this client with its own identity.
		grant.Subject = ""
		grant.Expiry = now.Add(e.anonymousLifetime())
	case up.Unreachable != nil:
		if !e.offlineGrant(w, &grant, now) {
			return
		}
	case up.Challenge.IsBearer():
		tok, err := e.Fetcher.Fetch(r.Context(), *up.Challenge, scopes, treq.creds)
		if errors.Is(err, ErrRefused) {
			writeOAuthError(w, http.StatusUnauthorized, "invalid_grant", "the upstream registry refused these credentials")
			return
		}
		if refused := (*netguard.RefusedError)(nil); errors.As(err, &refused) {
			// Not a token service that is down: one the proxy will not
			// ask. The client learns that much; the log gets where.
			e.logger().Warn("upstream token realm refused", zap.String("upstream", up.ID), zap.Error(err))
			writeOAuthError(w, http.StatusBadGateway, "temporarily_unavailable",
				"the upstream registry's token service is at an internal address, which the proxy does not connect to")
			return
		}
		if err != nil {
			// The token service is down or failing: credentials it
			// accepted lately still get what was confirmed for them.
			if !e.offlineGrant(w, &grant, now) {
				return
			}
			break
		}
		e.recordAccepted(grant.Subject, now)
		grant.Authorization = "Bearer " + tok.Value
		grant.Expiry = tok.Expiry
	case up.Challenge.IsBasic() && up.CheckBasic != nil:
		basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(treq.creds.Username+":"+treq.creds.Secret))
		if err := up.CheckBasic(r.Context(), basic); err != nil {
			if errors.Is(err, ErrRefused) {
				writeOAuthError(w, http.StatusUnauthorized, "invalid_grant", "the upstream registry refused these credentials")
			} else {
				writeOAuthError(w, http.StatusBadGateway, "temporarily_unavailable", "the upstream registry failed: "+err.Error())
			}
			return
		}
		e.recordAccepted(grant.Subject, now)
		grant.Authorization = basic
		grant.Expiry = now.Add(time.Hour)
	default:
		writeOAuthError(w, http.StatusBadGateway, "temporarily_unavailable",
			fmt.Sprintf("the upstream registry asks for %s authentication, which the proxy does not support", up.Challenge.Scheme))
		return
	}

	token, err := e.Sealer.Seal(grant)
	if err != nil {
		writeOAuthError(w, http.StatusInternalServerError, "server_error", "could not issue a token")
		return
	}
	expiresIn := int64(grant.Expiry.Sub(now) / time.Second)
	body, _ := json.Marshal(map[string]any{
		"token":        token,
		"access_token": token,
		"expires_in":   expiresIn,
		"issued_at":    now.UTC().Format(time.RFC3339),
		"scope":        strings.Join(scopes, " "),
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func (e *Endpoint) anonymousLifetime() time.Duration {
	if e.AnonymousLifetime > 0 {
		return e.AnonymousLifetime
	}
	return time.Hour
}

// offlineGrant completes grant for credentials the upstream cannot check
// now, if it accepted them within the offline window; otherwise it answers
// the request and returns false.
func (e *Endpoint) offlineGrant(w http.ResponseWriter, grant *Grant, now time.Time) bool {
	if !e.acceptedRecently(grant.Subject, now) {
		writeOAuthError(w, http.StatusServiceUnavailable, "temporarily_unavailable",
			"the upstream registry cannot be reached to check these credentials; try again later")
		return false
	}
	grant.Expiry = now.Add(5 * time.Minute)
	return true
}

// TokenRequest is a token request that ParseRequest validated: its scopes
// parse and its credentials, if any, are well-formed. The upstream has not
// seen any of it yet.
type TokenRequest struct {
	scopes []Scope
	creds  *Credentials
	// account and accountTag name the proxy account the request's
	// credentials were verified for (AsAccount).
	account, accountTag string
}

// Scopes are the request's scopes, as the client sent them.
func (t TokenRequest) Scopes() []Scope { return t.scopes }

// Credentials are the Basic or password-grant credentials the client
// sent, nil for none.
func (t TokenRequest) Credentials() *Credentials { return t.creds }

// AsAccount is the request of a client whose credentials were verified
// as the proxy account name (of version tag): the token names the account
// and carries no upstream credentials (the credentials were the proxy's,
// and never go upstream).
func (t TokenRequest) AsAccount(name, tag string) TokenRequest {
	t.creds = nil
	t.account, t.accountTag = name, tag
	return t
}

// RequestError says why a token request is malformed.
type RequestError struct {
	Status int
	// Code is the OAuth2 error code: invalid_request or invalid_scope.
	Code        string
	Description string
	// Allow, if set, is the Allow header of a 405.
	Allow string
}

func (e *RequestError) Error() string { return e.Code + ": " + e.Description }

// Write answers the malformed request in the token endpoint's format.
func (e *RequestError) Write(w http.ResponseWriter) {
	if e.Allow != "" {
		w.Header().Set("Allow", e.Allow)
	}
	writeOAuthError(w, e.Status, e.Code, e.Description)
}

func badRequest(format string, args ...any) *RequestError {
	return &RequestError{Status: http.StatusBadRequest, Code: "invalid_request", Description: fmt.Sprintf(format, args...)}
}

// Bounds of one token request. The scopes, query and form are bounded so
// that a request cannot make the proxy parse or seal without limit (the
// query as Caddy bounds request headers by default, whatever a server's
// max_header_size); credentials are bounded so that what the proxy seals
// from them fits in a token it accepts (maxTokenLength). A GCP
// service-account key, the longest secret registries take as a password,
// is about 2.5 KiB.
const (
	maxScopes       = 64
	maxQueryLength  = 16 << 10
	maxFormLength   = 64 << 10
	maxUsernameSize = 256
	maxSecretSize   = 4 << 10
)

// ParseRequest reads and validates a token request: its method, its
// Authorization header or password-grant form, its scopes and their
// number, the sizes of what it carries. Nothing else reads the request, so
// an error here means the request is answered without any upstream seeing
// it.
func ParseRequest(r *http.Request) (TokenRequest, *RequestError) {
	var treq TokenRequest
	var raw []string
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if len(r.URL.RawQuery) > maxQueryLength {
			return treq, badRequest("query too long (at most %d bytes)", maxQueryLength)
		}
		for _, s := range r.URL.Query()["scope"] {
			raw = append(raw, strings.Fields(s)...)
		}
		if user, pass, ok := r.BasicAuth(); ok {
			treq.creds = &Credentials{Username: user, Secret: pass}
		} else if r.Header.Get("Authorization") != "" {
			return treq, badRequest("the Authorization header is not Basic credentials")
		}
	case http.MethodPost:
		r.Body = http.MaxBytesReader(nil, r.Body, maxFormLength)
		if err := r.ParseForm(); err != nil {
			return treq, badRequest("bad form: %v", err)
		}
		for _, s := range r.PostForm["scope"] {
			raw = append(raw, strings.Fields(s)...)
		}
		switch gt := r.PostForm.Get("grant_type"); gt {
		case "password":
			treq.creds = &Credentials{Username: r.PostForm.Get("username"), Secret: r.PostForm.Get("password")}
		case "":
			// Anonymous.
		default:
			return treq, badRequest("unsupported grant_type %q: use password", gt)
		}
	default:
		return treq, &RequestError{Status: http.StatusMethodNotAllowed, Code: "invalid_request",
			Description: fmt.Sprintf("method %s not allowed", r.Method), Allow: "GET, HEAD, POST"}
	}
	if len(raw) > maxScopes {
		return treq, badRequest("too many scopes (%d, at most %d)", len(raw), maxScopes)
	}
	if c := treq.creds; c != nil {
		if c.Username == "" || len(c.Username) > maxUsernameSize || strings.ContainsAny(c.Username, "\x00\r\n:") {
			return treq, badRequest("invalid username")
		}
		if len(c.Secret) > maxSecretSize {
			return treq, badRequest("password too long (at most %d bytes)", maxSecretSize)
		}
	}
	for _, s := range raw {
		scope, err := ParseScope(s)
		if err != nil {
			return treq, &RequestError{Status: http.StatusBadRequest, Code: "invalid_scope", Description: err.Error()}
		}
		treq.scopes = append(treq.scopes, scope)
	}
	return treq, nil
}

func writeOAuthError(w http.ResponseWriter, status int, code, description string) {
	body, _ := json.Marshal(map[string]any{
		"error":             code,
		"error_description": description,
		// The registry error format too, which docker prints.
		"errors": []map[string]string{{"code": registryCode(status), "message": description}},
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func registryCode(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "UNAUTHORIZED"
	case http.StatusForbidden:
		return "DENIED"
	case http.StatusTooManyRequests:
		return "TOOMANYREQUESTS"
	case http.StatusBadRequest, http.StatusMethodNotAllowed:
		return "UNSUPPORTED"
	default:
		return "UNAVAILABLE"
	}
}
