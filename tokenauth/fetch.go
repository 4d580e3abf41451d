package tokenauth

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Credentials are a username and a secret (password or access token).
type Credentials struct {
	Username string
	Secret   string
}

// Token is a bearer token issued by an upstream's token service.
type Token struct {
	Value  string
	Expiry time.Time
}

// ErrRefused means the token service refused the credentials (401/403).
var ErrRefused = errors.New("token service refused the credentials")

// Fetcher obtains tokens from upstream token services. Tokens are cached
// until shortly before they expire, within a memory bound, and fetched once
// for any number of concurrent requests.
type Fetcher struct {
	// Client does the HTTP requests. Whatever its CheckRedirect, a
	// redirect keeps the credentials only to the realm's exact origin, and
	// its transport is guarded by the request's netguard policy.
	Client *http.Client
	// UserAgent is sent to the token service.
	UserAgent string
	// MaxCacheBytes bounds the cached tokens: their values and keys,
	// counted in bytes. Beyond it the least recently used go first.
	// Default 4 MiB, some two thousand of Docker Hub's tokens (a few
	// minutes' worth of new repository names for a busy proxy: the
	// tokens live five minutes).
	MaxCacheBytes int

	mu     sync.Mutex
	cache  map[string]*list.Element // of *cached, by cacheKey
	lru    list.List                // most recently used first
	bytes  int                      // what the cached entries cost
	groups map[string]*tokenGroup   // by groupKey, for FetchShared
	flight singleflight.Group
}

// cached is one token in the cache.
type cached struct {
	key string
	tok Token
}

// entryOverhead approximates what a cache entry costs beyond its key and
// token: the list element, the map slot, the struct.
const entryOverhead = 160

func (c *cached) cost() int { return len(c.key) + len(c.tok.Value) + entryOverhead }

const defaultMaxCacheBytes = 4 << 20

func (f *Fetcher) maxCacheBytes() int {
	if f.MaxCacheBytes > 0 {
		return f.MaxCacheBytes
	}
	return defaultMaxCacheBytes
}

// maxTokenResponse bounds what we read from a token service.
const maxTokenResponse = 1 << 20

// Fetch returns a token for the challenge's realm and service covering
// scopes, using creds if not nil. Results are cached per realm, service,
// scopes and credentials; the cache key holds only a hash of the secret.
func (f *Fetcher) Fetch(ctx context.Context, ch Challenge, scopes []string, creds *Credentials) (Token, error) {
	key := cacheKey(ch, scopes, creds)
	if t, ok := f.lookup(key); ok {
		return t, nil
	}
	// The shared fetch must not die with the first caller's request: it
	// runs on its own context, and each caller waits on its own.
	done := f.flight.DoChan(key, func() (any, error) {
		if t, ok := f.lookup(key); ok {
			return t, nil
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		t, err := f.fetch(fctx, ch, scopes, creds)
		if err != nil {
			return Token{}, err
		}
		// Renew a little before the service's expiry so a token never
		// runs out between our check and the upstream's.
		kept := t
		kept.Expiry = t.Expiry.Add(-time.Until(t.Expiry) / 10)
		f.store(key, groupKey(ch, creds), kept)
		return t, nil
	})
	select {
	case res := <-done:
		return res.Val.(Token), res.Err
	case <-ctx.Done():
		return Token{}, ctx.Err()
	}
}

// lookup returns the live cached token of key, and marks it used.
func (f *Fetcher) lookup(key string) (Token, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.cache[key]
	if !ok {
		return Token{}, false
	}
	c := e.Value.(*cached)
	if time.Until(c.tok.Expiry) <= 0 {
		f.removeLocked(e)
		return Token{}, false
	}
	f.lru.MoveToFront(e)
	return c.tok, true
}

// store caches tok under key, evicting the least recently used tokens
// beyond the memory bound, and makes it its group's token to lend.
func (f *Fetcher) store(key, group string, tok Token) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cache == nil {
		f.cache = map[string]*list.Element{}
	}
	if e, ok := f.cache[key]; ok {
		f.removeLocked(e)
	}
	c := &cached{key: key, tok: tok}
	f.cache[key] = f.lru.PushFront(c)
	f.bytes += c.cost()
	for f.bytes > f.maxCacheBytes() && f.lru.Len() > 1 {
		f.removeLocked(f.lru.Back())
	}
	if g := f.groups[group]; g != nil {
		g.latest = tok
	}
}

func (f *Fetcher) removeLocked(e *list.Element) {
	c := f.lru.Remove(e).(*cached)
	delete(f.cache, c.key)
	f.bytes -= c.cost()
}

// fetchTimeout bounds one request to a token service.
const fetchTimeout = 30 * time.Second

// Forget drops a cached token, after the upstream refused it.
func (f *Fetcher) Forget(ch Challenge, scopes []string, creds *Credentials) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.cache[cacheKey(ch, scopes, creds)]; ok {
		f.removeLocked(e)
	}
}

func cacheKey(ch Challenge, scopes []string, creds *Credentials) string {
	s := append([]string(nil), scopes...)
	sort.Strings(s)
	return groupKey(ch, creds) + "\x00" + strings.Join(s, " ")
}

// groupKey names the tokens of one realm, service and identity; the key
// holds only a hash of the secret.
func groupKey(ch Challenge, creds *Credentials) string {
	id := "anonymous"
	if creds != nil {
		sum := sha256.Sum256([]byte(creds.Username + "\x00" + creds.Secret))
		id = hex.EncodeToString(sum[:])
	}
	return ch.Realm() + "\x00" + ch.Service() + "\x00" + id
}

// fetch asks the token service with a GET, the form every registry
// supports (docker's token spec); credentials go as Basic auth.
func (f *Fetcher) fetch(ctx context.Context, ch Challenge, scopes []string, creds *Credentials) (Token, error) {
	realm, err := url.Parse(ch.Realm())
	if err != nil || (realm.Scheme != "https" && realm.Scheme != "http") || realm.Host == "" {
		return Token{}, fmt.Errorf("upstream token realm %q is not an http(s) URL", ch.Realm())
	}
	q := realm.Query()
	if s := ch.Service(); s != "" {
		q.Set("service", s)
	}
	for _, s := range scopes {
		q.Add("scope", s)
	}
	if creds != nil && creds.Username != "" {
		q.Set("account", creds.Username)
	}
	realm.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return Token{}, err
	}
	if creds != nil {
		req.SetBasicAuth(creds.Username, creds.Secret)
	}
	if f.UserAgent != "" {
		req.Header.Set("User-Agent", f.UserAgent)
	}
	resp, err := realmClient(f.Client).Do(req)
	if err != nil {
		return Token{}, fmt.Errorf("token service %s: %w", realm.Host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse))
	if err != nil {
		return Token{}, fmt.Errorf("token service %s: %w", realm.Host, err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return Token{}, fmt.Errorf("%w (%s answered %d)", ErrRefused, realm.Host, resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return Token{}, &StatusError{Host: realm.Host, Status: resp.StatusCode}
	}
	return parseTokenResponse(body, time.Now())
}

// StatusError is a token service's unexpected HTTP status.
type StatusError struct {
	Host   string
	Status int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("token service %s answered %d", e.Host, e.Status)
}

// tokenResponse is the body of a token service's answer. Docker's token
// spec names the token "token"; OAuth2 names it "access_token".
type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	IssuedAt    string `json:"issued_at"`
}

// defaultExpiry is what the token spec says to assume without expires_in.
const defaultExpiry = 60 * time.Second

func parseTokenResponse(body []byte, now time.Time) (Token, error) {
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return Token{}, fmt.Errorf("token service answer is not JSON: %v", err)
	}
	value := tr.Token
	if value == "" {
		value = tr.AccessToken
	}
	if value == "" {
		return Token{}, errors.New("token service answer has no token")
	}
	if strings.ContainsAny(value, "\r\n") {
		return Token{}, errors.New("token service answer has a token with a line break")
	}
	expiresIn := time.Duration(tr.ExpiresIn) * time.Second
	if expiresIn < defaultExpiry {
		expiresIn = defaultExpiry
	}
	return Token{Value: value, Expiry: now.Add(expiresIn)}, nil
}
