package dockerproxy

// Proxy accounts and repository rules: the configuration of a private
// site, checked here and enforced by the registry package's gates.

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-dockerproxy/dockerproxy/accounts"
	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// User is an account of the proxy itself. With any users configured, the
// site is private: clients log in (docker login <proxy host>) with one of
// these accounts.
type User struct {
	Name string `json:"name"`
	// Hash is the password's hash as `caddy hash-password` prints it:
	// bcrypt ($2a$...) or argon2id ($argon2id$...), or base64 of one (as
	// older Caddy versions printed). Placeholders such as
	// {env.ALICE_HASH} are expanded at provision time.
	Hash string `json:"hash"`
}

// checkUserName reports whether name can be an account's name: what
// Basic credentials can carry.
func checkUserName(name string) error {
	if name == "" || len(name) > 256 || strings.ContainsAny(name, ":\x00\r\n\t ") {
		return fmt.Errorf("invalid user name '%s': want up to 256 characters without ':', spaces or control characters", name)
	}
	return nil
}

// parsedHash is a password hash with the comparer of its algorithm.
type parsedHash struct {
	hash    []byte
	compare func(hash, password []byte) (bool, error)
	// decoy is a hash of the same algorithm, compared with for names
	// that are no account.
	decoy []byte
}

// parseHash parses a hash that caddy hash-password made.
func parseHash(user, s string) (parsedHash, error) {
	raw := []byte(s)
	if !strings.HasPrefix(s, "$") {
		if dec, err := base64.StdEncoding.DecodeString(s); err == nil && strings.HasPrefix(string(dec), "$") {
			raw = dec
		}
	}
	malformed := func(why string) error {
		return fmt.Errorf("malformed password hash for user '%s' (%s): want the output of caddy hash-password, bcrypt ($2a$...) or argon2id ($argon2id$...)", user, why)
	}
	switch h := string(raw); {
	case strings.HasPrefix(h, "$2a$"), strings.HasPrefix(h, "$2b$"), strings.HasPrefix(h, "$2y$"):
		if _, err := bcrypt.Cost(raw); err != nil {
			return parsedHash{}, malformed(err.Error())
		}
		return parsedHash{hash: raw, compare: caddyauth.BcryptHash{}.Compare, decoy: caddyauth.BcryptHash{}.FakeHash()}, nil
	case strings.HasPrefix(h, "$argon2id$"):
		if _, _, err := caddyauth.DecodeHash(raw); err != nil {
			return parsedHash{}, malformed(err.Error())
		}
		return parsedHash{hash: raw, compare: caddyauth.Argon2idHash{}.Compare, decoy: caddyauth.Argon2idHash{}.FakeHash()}, nil
	default:
		return parsedHash{}, malformed("unknown format")
	}
}

// checkUsers checks names (unique, well-formed) and the hashes that hold
// no placeholder (the others are checked once expanded).
func checkUsers(users []User) error {
	seen := make(map[string]bool, len(users))
	for _, u := range users {
		if err := checkUserName(u.Name); err != nil {
			return err
		}
		if seen[u.Name] {
			return fmt.Errorf("user '%s' already specified", u.Name)
		}
		seen[u.Name] = true
		if !hasPlaceholder(u.Hash) {
			if _, err := parseHash(u.Name, u.Hash); err != nil {
				return err
			}
		}
	}
	return nil
}

// accountChecker builds the checker of the handler's users, placeholders
// expanded; nil when the site has no users (it is public).
func (h *Handler) accountChecker(repl *caddy.Replacer) (*accounts.Checker, error) {
	if len(h.Users) == 0 {
		return nil, nil
	}
	users := make([]accounts.User, 0, len(h.Users))
	var decoy accounts.User
	for _, u := range h.Users {
		p, err := parseHash(u.Name, repl.ReplaceKnown(u.Hash, ""))
		if err != nil {
			return nil, fmt.Errorf("users: %w", err)
		}
		users = append(users, accounts.User{Name: u.Name, Hash: p.hash, Compare: p.compare})
		if decoy.Hash == nil {
			decoy = accounts.User{Hash: p.decoy, Compare: p.compare}
		}
	}
	return accounts.New(users, decoy, accounts.Options{}), nil
}

// repositoryRules compiles the handler's rules against its routes.
func (h *Handler) repositoryRules(router *registry.Router) (*registry.Rules, error) {
	if len(h.Rules) == 0 {
		return nil, nil
	}
	return registry.NewRules(router, h.Upstreams, h.Rules)
}

// validateGates checks users and rules, for Validate.
func (h *Handler) validateGates() error {
	if err := checkUsers(h.Users); err != nil {
		return fmt.Errorf("users: %w", err)
	}
	if len(h.Rules) == 0 {
		return nil
	}
	router, err := registry.NewRouter(h.routerConfig())
	if err != nil {
		return err
	}
	_, err = h.repositoryRules(router)
	return err
}

// clientIP is the client's address as Caddy determined it (trusted
// proxies considered).
func clientIP(r *http.Request) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	return ip
}

// setUserID names the account of a request where Caddy's access log
// takes it (user_id), as Caddy's basic_auth does, and in the placeholder
// {http.docker_proxy.account} (observe.go).
func setUserID(r *http.Request, account string) {
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.auth.user.id", account)
		repl.Set(placeholderAccount, account)
	}
}

var errUsersEmpty = errors.New("users needs at least one account: <name> <hash>")
