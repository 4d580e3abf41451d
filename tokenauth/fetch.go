package tokenauth

import (
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

// Fetcher obtains tokens from upstream token services. Tokens for the
// proxy's own identity are cached until shortly before they expire and
// fetched once for any number of concurrent requests.
type Fetcher struct {
	// Client does the HTTP requests. Whatever its CheckRedirect, a
	// redirect keeps the credentials only to the realm's exact origin, and
	// its transport is guarded by the request's netguard policy.
	Client *http.Client
	// UserAgent is sent to the token service.
	UserAgent string

	mu     sync.Mutex
	cache  map[string]Token
	flight singleflight.Group
}

// maxTokenResponse bounds what we read from a token service.
const maxTokenResponse = 1 << 20

// Fetch returns a token for the challenge's realm and service covering
// scopes, using creds if not nil. Results are cached per realm, service,
// scopes and credentials; the cache key holds only a hash of the secret.
func (f *Fetcher) Fetch(ctx context.Context, ch Challenge, scopes []string, creds *Credentials) (Token, error) {
	key := cacheKey(ch, scopes, creds)
	f.mu.Lock()
	if t, ok := f.cache[key]; ok && time.Until(t.Expiry) > 0 {
		f.mu.Unlock()
		return t, nil
	}
	f.mu.Unlock()
	// The shared fetch must not die with the first caller's request: it
	// runs on its own context, and each caller waits on its own.
	done := f.flight.DoChan(key, func() (any, error) {
		f.mu.Lock()
		if t, ok := f.cache[key]; ok && time.Until(t.Expiry) > 0 {
			f.mu.Unlock()
			return t, nil
		}
		f.mu.Unlock()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		t, err := f.fetch(fctx, ch, scopes, creds)
		if err != nil {
			return Token{}, err
		}
		// Renew a little before the service's expiry so a token never
		// runs out between our check and the upstream's.
		cached := t
		cached.Expiry = t.Expiry.Add(-time.Until(t.Expiry) / 10)
		f.mu.Lock()
		if f.cache == nil {
			f.cache = map[string]Token{}
		}
		f.pruneLocked()
		f.cache[key] = cached
		f.mu.Unlock()
		return t, nil
	})
	select {
	case res := <-done:
		return res.Val.(Token), res.Err
	case <-ctx.Done():
		return Token{}, ctx.Err()
	}
}

// fetchTimeout bounds one request to a token service.
const fetchTimeout = 30 * time.Second

// Forget drops a cached token, after the upstream refused it.
func (f *Fetcher) Forget(ch Challenge, scopes []string, creds *Credentials) {
	f.mu.Lock()
	delete(f.cache, cacheKey(ch, scopes, creds))
	f.mu.Unlock()
}

func (f *Fetcher) pruneLocked() {
	if len(f.cache) < 1024 {
		return
	}
	now := time.Now()
	for k, t := range f.cache {
		if t.Expiry.Before(now) {
			delete(f.cache, k)
		}
	}
}

func cacheKey(ch Challenge, scopes []string, creds *Credentials) string {
	s := append([]string(nil), scopes...)
	sort.Strings(s)
	id := "anonymous"
	if creds != nil {
		sum := sha256.Sum256([]byte(creds.Username + "\x00" + creds.Secret))
		id = hex.EncodeToString(sum[:])
	}
	return ch.Realm() + "\x00" + ch.Service() + "\x00" + strings.Join(s, " ") + "\x00" + id
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
