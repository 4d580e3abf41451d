package tokenauth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Grant is what a token from /v2/auth carries. The proxy seals it so that
// clients can neither read nor forge it: it may hold the client's upstream
// credentials, which must go to that upstream only.
type Grant struct {
	// Upstream binds the grant to one upstream (its base URL): a token
	// issued on one route is refused on another.
	Upstream string `json:"u"`
	// Scopes are the scopes the client asked for (after normalisation).
	Scopes []string `json:"s,omitempty"`
	// Authorization is the header value to send upstream on the client's
	// behalf ("Bearer <upstream token>" or "Basic ..."), empty for an
	// anonymous client, which the proxy serves with its own identity.
	Authorization string `json:"a,omitempty"`
	// Expiry is when the token stops being accepted.
	Expiry time.Time `json:"e"`
	// Subject names the client's credentials (a keyed hash, never the
	// secret), so that access the upstream confirmed for them is
	// remembered across the short-lived upstream tokens. Empty for
	// anonymous clients.
	Subject string `json:"sub,omitempty"`
	// Account is the proxy account the client logged in with, on a
	// site with accounts; AccountTag names the account's version (its
	// hash), so that the token dies with the account or its password.
	// Upstream, such a client is served with the proxy's own identity.
	Account    string `json:"acc,omitempty"`
	AccountTag string `json:"act,omitempty"`
}

// Anonymous reports whether the grant carries no upstream credentials, so
// the proxy's own identity serves it upstream. A grant issued offline for
// known credentials is anonymous upstream but keeps its Subject.
func (g Grant) Anonymous() bool { return g.Authorization == "" }

// Sealer seals and opens grants with AES-256-GCM under a key that every
// proxy instance behind one load balancer shares.
type Sealer struct {
	aead       cipher.AEAD
	subjectKey [32]byte

	// opened remembers the grants of tokens opened lately: a client
	// sends its token with every request of a pull, and decrypting and
	// decoding it each time was a fifth of a cache hit's cost. Only
	// tokens that opened are kept; expiry is checked at every use.
	mu     sync.Mutex
	opened map[string]Grant
}

// openedMax bounds the opened-token memo, which starts over when full, and
// openedMaxToken the tokens it keeps (a pull's token has a few hundred
// bytes; one asked for with dozens of scopes is opened each time).
const (
	openedMax      = 4096
	openedMaxToken = 2048
)

// ErrInvalidToken is returned for tokens that do not open: forged,
// corrupted, sealed under another key, or expired.
var ErrInvalidToken = errors.New("invalid or expired token")

// tokenPrefix marks the proxy's own tokens, so that an upstream's token
// sent by mistake is recognised as foreign and not tried as ciphertext.
const tokenPrefix = "dp1."

// NewSealer derives the AEAD key from secret (any length; sha256 is enough
// because the key is either random or an operator-chosen high-entropy
// secret, and a KDF would add nothing against a low-entropy one).
func NewSealer(secret []byte) (*Sealer, error) {
	if len(secret) < 16 {
		return nil, errors.New("auth key must be at least 16 bytes")
	}
	key := sha256.Sum256(secret)
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead, subjectKey: sha256.Sum256(append([]byte("subject\x00"), secret...))}, nil
}

// Subject returns the name of a client's credentials for an upstream: an
// HMAC under the sealing key, so it reveals nothing and cannot be computed
// without the key.
func (s *Sealer) Subject(upstream string, c Credentials) string {
	m := hmac.New(sha256.New, s.subjectKey[:])
	m.Write([]byte(upstream + "\x00" + c.Username + "\x00" + c.Secret))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:24])
}

// Seal encrypts and authenticates g into a token string.
func (s *Sealer) Seal(g Grant) (string, error) {
	plain, err := json.Marshal(g)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("sealing token: %w", err)
	}
	sealed := s.aead.Seal(nonce, nonce, plain, []byte(tokenPrefix))
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(sealed), nil
}

// maxTokenLength bounds the work spent on a token a client sends.
const maxTokenLength = 16 << 10

// Open authenticates and decrypts a token made by Seal. It fails with
// ErrInvalidToken for anything else, including expired grants.
func (s *Sealer) Open(token string, now time.Time) (Grant, error) {
	if len(token) > maxTokenLength || len(token) <= len(tokenPrefix) || token[:len(tokenPrefix)] != tokenPrefix {
		return Grant{}, ErrInvalidToken
	}
	s.mu.Lock()
	g, ok := s.opened[token]
	s.mu.Unlock()
	if ok {
		if !now.Before(g.Expiry) {
			return Grant{}, ErrInvalidToken
		}
		return g, nil
	}
	g, err := s.open(token, now)
	if err != nil || len(token) > openedMaxToken {
		return g, err
	}
	s.mu.Lock()
	if s.opened == nil || len(s.opened) >= openedMax {
		s.opened = make(map[string]Grant)
	}
	s.opened[token] = g
	s.mu.Unlock()
	return g, nil
}

// open decrypts and decodes a token (its form already checked).
func (s *Sealer) open(token string, now time.Time) (Grant, error) {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(token[len(tokenPrefix):])
	if err != nil || len(raw) < s.aead.NonceSize()+s.aead.Overhead() {
		return Grant{}, ErrInvalidToken
	}
	nonce, ciphertext := raw[:s.aead.NonceSize()], raw[s.aead.NonceSize():]
	plain, err := s.aead.Open(nil, nonce, ciphertext, []byte(tokenPrefix))
	if err != nil {
		return Grant{}, ErrInvalidToken
	}
	var g Grant
	if err := json.Unmarshal(plain, &g); err != nil {
		return Grant{}, ErrInvalidToken
	}
	if !now.Before(g.Expiry) {
		return Grant{}, ErrInvalidToken
	}
	return g, nil
}
