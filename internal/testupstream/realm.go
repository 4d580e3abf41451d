package testupstream

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"
)

// authState holds users, private repositories and issued tokens. Tokens are
// opaque random strings remembered server-side (not JWTs): the proxy must
// treat them as opaque, and a test can never forge one.
type authState struct {
	mu      sync.Mutex
	users   map[string]string          // username -> password
	private map[string]map[string]bool // repo -> allowed usernames
	tokens  map[string]grant
	issued  []string // every token, in order, expired or not
}

type grant struct {
	user    string
	pull    map[string]bool // repositories this token may pull
	public  bool            // and every public repository (WideAnonymousTokens)
	expires time.Time
}

func newAuthState() *authState {
	return &authState{users: map[string]string{}, private: map[string]map[string]bool{}, tokens: map[string]grant{}}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// SetPrivate makes repo private and lets username (with password) pull it.
// Calling it again with another user adds that user; calling it again with
// the same user replaces the password. A user registered for any private
// repository is a valid identity at the realm.
func (u *Upstream) SetPrivate(repo, username, password string) {
	a := u.auth
	a.mu.Lock()
	defer a.mu.Unlock()
	a.users[username] = password
	if a.private[repo] == nil {
		a.private[repo] = map[string]bool{}
	}
	a.private[repo][username] = true
}

// SetPublic makes repo public again. Users stay registered.
func (u *Upstream) SetPublic(repo string) {
	u.auth.mu.Lock()
	defer u.auth.mu.Unlock()
	delete(u.auth.private, repo)
}

// AddUser registers a user who may log in but owns no private repository.
func (u *Upstream) AddUser(username, password string) {
	u.auth.mu.Lock()
	defer u.auth.mu.Unlock()
	u.auth.users[username] = password
}

// IssuedTokens returns every token the realm has issued, oldest first,
// so that tests can look for them where they must not be (logs, other
// hosts).
func (u *Upstream) IssuedTokens() []string {
	u.auth.mu.Lock()
	defer u.auth.mu.Unlock()
	return append([]string(nil), u.auth.issued...)
}

// mayPull reports whether user ("" is anonymous) may pull repo.
func (a *authState) mayPull(user, repo string) bool {
	allowed, isPrivate := a.private[repo]
	if !isPrivate {
		return true
	}
	return user != "" && allowed[user]
}

// authorize reports whether token grants pull on repo ("" = any valid token).
func (a *authState) authorize(token, repo string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	g, ok := a.tokens[token]
	if !ok {
		return false
	}
	if time.Now().After(g.expires) {
		delete(a.tokens, token)
		return false
	}
	return repo == "" || g.pull[repo] || g.public && a.mayPull("", repo)
}

type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
	IssuedAt    string `json:"issued_at"`
}

// serveRealm is the token endpoint, GET (docker, ggcr) or POST form
// (containerd's OAuth2 password grant).
func (u *Upstream) serveRealm(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/token" {
		http.NotFound(w, r)
		return
	}
	u.Counters.tokens.Add(1)
	var service string
	var scopes []string
	user, pass, hasBasic := r.BasicAuth()
	switch r.Method {
	case http.MethodGet:
		q := r.URL.Query()
		service = q.Get("service")
		scopes = q["scope"]
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			writeTokenError(w, http.StatusBadRequest, "invalid_request", err.Error())
			return
		}
		service = r.PostForm.Get("service")
		for _, s := range r.PostForm["scope"] {
			scopes = append(scopes, strings.Fields(s)...)
		}
		switch r.PostForm.Get("grant_type") {
		case "password":
			user, pass, hasBasic = r.PostForm.Get("username"), r.PostForm.Get("password"), true
		case "":
		default:
			writeTokenError(w, http.StatusBadRequest, "unsupported_grant_type", "only the password grant is supported")
			return
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		writeTokenError(w, http.StatusMethodNotAllowed, "invalid_request", "method not allowed")
		return
	}
	if service != "" && service != u.Service {
		writeTokenError(w, http.StatusBadRequest, "invalid_request", "unknown service")
		return
	}
	a := u.auth
	a.mu.Lock()
	defer a.mu.Unlock()
	if hasBasic {
		if want, ok := a.users[user]; !ok || want != pass {
			writeTokenError(w, http.StatusUnauthorized, "unauthorized", "incorrect username or password")
			return
		}
	} else {
		user = ""
	}
	g := grant{user: user, pull: map[string]bool{}, public: user == "" && u.opts.WideAnonymousTokens, expires: time.Now().Add(u.opts.TokenTTL)}
	for _, s := range scopes {
		// repository:<name>:<actions>; names never contain ':' but may be
		// followed by a tag-less action list such as "pull,push".
		parts := strings.Split(s, ":")
		if len(parts) != 3 || parts[0] != "repository" {
			continue
		}
		for _, act := range strings.Split(parts[2], ",") {
			if act == "pull" && a.mayPull(user, parts[1]) {
				g.pull[parts[1]] = true
			}
		}
	}
	tok := hex.EncodeToString(randomBytes(u.opts.TokenBytes))
	a.tokens[tok] = g
	a.issued = append(a.issued, tok)
	now := time.Now().UTC()
	resp := tokenResponse{
		Token:       tok,
		AccessToken: tok,
		ExpiresIn:   int(u.opts.TokenTTL / time.Second),
		IssuedAt:    now.Format(time.RFC3339),
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func writeTokenError(w http.ResponseWriter, code int, errCode, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": errCode, "error_description": msg, "details": msg})
}
