package tokenauth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func mustSealer(t testing.TB, key []byte) *Sealer {
	t.Helper()
	s, err := NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// t0 is a fixed time: the tests never depend on the clock.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func testGrant() Grant {
	return Grant{
		Upstream:      "https://registry-1.docker.io",
		Scopes:        []string{"repository:library/alpine:pull", "repository:library/busybox:pull"},
		Authorization: "Bearer upstream-token.with.dots",
		Expiry:        t0.Add(time.Hour),
	}
}

func TestNewSealer(t *testing.T) {
	for _, n := range []int{0, 1, 15} {
		if _, err := NewSealer(make([]byte, n)); err == nil {
			t.Errorf("NewSealer with a %d-byte key: no error", n)
		}
	}
	for _, n := range []int{16, 32, 100} {
		if _, err := NewSealer(make([]byte, n)); err != nil {
			t.Errorf("NewSealer with a %d-byte key: %v", n, err)
		}
	}
}

func TestSealOpen(t *testing.T) {
	s := mustSealer(t, testKey)
	grants := []Grant{
		testGrant(),
		{Upstream: "https://ghcr.io", Expiry: t0.Add(time.Second)},
		{Upstream: "http://127.0.0.1:5000", Scopes: []string{}, Authorization: "Basic dXNlcjpwYXNz", Expiry: t0.Add(24 * time.Hour)},
		{Upstream: "", Authorization: strings.Repeat("x", 4000), Expiry: t0.Add(time.Minute)},
	}
	for _, g := range grants {
		tok, err := s.Seal(g)
		if err != nil {
			t.Fatalf("Seal(%+v): %v", g, err)
		}
		if !strings.HasPrefix(tok, "dp1.") {
			t.Errorf("token %q lacks the dp1. prefix", tok)
		}
		if strings.ContainsAny(tok, " \t\r\n\",;=+/") {
			t.Errorf("token %q is not header- and URL-safe", tok)
		}
		if g.Authorization != "" && strings.Contains(tok, g.Authorization[len(g.Authorization)/2:]) {
			t.Errorf("token %q shows the credentials", tok)
		}
		got, err := s.Open(tok, t0)
		if err != nil {
			t.Fatalf("Open(Seal(%+v)): %v", g, err)
		}
		want := g
		if len(want.Scopes) == 0 {
			want.Scopes = nil // omitempty
		}
		if !got.Expiry.Equal(want.Expiry) {
			t.Errorf("expiry %v, want %v", got.Expiry, want.Expiry)
		}
		got.Expiry, want.Expiry = time.Time{}, time.Time{}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Open(Seal(g)) = %#v, want %#v", got, want)
		}
		if got.Anonymous() != (g.Authorization == "") {
			t.Errorf("Anonymous() = %v for %q", got.Anonymous(), g.Authorization)
		}
	}
}

func TestSealIsRandomized(t *testing.T) {
	s := mustSealer(t, testKey)
	a, _ := s.Seal(testGrant())
	b, _ := s.Seal(testGrant())
	if a == b {
		t.Errorf("two seals of one grant are equal: %s", a)
	}
}

func TestOpenSharedKey(t *testing.T) {
	// Every instance behind a load balancer derives the same key.
	a, b := mustSealer(t, testKey), mustSealer(t, append([]byte(nil), testKey...))
	tok, _ := a.Seal(testGrant())
	if _, err := b.Open(tok, t0); err != nil {
		t.Errorf("another instance with the same key: %v", err)
	}
}

func TestOpenOtherKey(t *testing.T) {
	tok, _ := mustSealer(t, testKey).Seal(testGrant())
	for _, key := range []string{"0123456789abcdef0123456789abcdeF", "0123456789abcdef", "another secret key of some length"} {
		if g, err := mustSealer(t, []byte(key)).Open(tok, t0); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("key %q opened the token: %+v, %v", key, g, err)
		}
	}
}

func TestOpenExpiry(t *testing.T) {
	s := mustSealer(t, testKey)
	g := testGrant()
	tok, _ := s.Seal(g)
	for _, tt := range []struct {
		now time.Time
		ok  bool
	}{
		{t0, true},
		{g.Expiry.Add(-time.Nanosecond), true},
		{g.Expiry, false},
		{g.Expiry.Add(time.Second), false},
		{g.Expiry.Add(24 * time.Hour), false},
	} {
		_, err := s.Open(tok, tt.now)
		if tt.ok && err != nil {
			t.Errorf("Open at %v: %v", tt.now, err)
		}
		if !tt.ok && !errors.Is(err, ErrInvalidToken) {
			t.Errorf("Open at %v (expiry %v): %v, want ErrInvalidToken", tt.now, g.Expiry, err)
		}
	}
	zero, _ := s.Seal(Grant{Upstream: "x"})
	if _, err := s.Open(zero, t0); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("a grant without expiry opened: %v", err)
	}
}

// TestOpenTamperedCiphertext flips every bit of the sealed bytes, one at a
// time: AES-GCM must refuse each.
func TestOpenTamperedCiphertext(t *testing.T) {
	s := mustSealer(t, testKey)
	tok, _ := s.Seal(testGrant())
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(tok, tokenPrefix))
	if err != nil {
		t.Fatal(err)
	}
	for i := range raw {
		for bit := 0; bit < 8; bit++ {
			bad := append([]byte(nil), raw...)
			bad[i] ^= 1 << bit
			forged := tokenPrefix + base64.RawURLEncoding.EncodeToString(bad)
			if g, err := s.Open(forged, t0); !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("byte %d bit %d flipped: opened %+v, %v", i, bit, g, err)
			}
		}
	}
	// Truncated and extended.
	for _, forged := range []string{
		tokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:len(raw)-1]),
		tokenPrefix + base64.RawURLEncoding.EncodeToString(raw[1:]),
		tokenPrefix + base64.RawURLEncoding.EncodeToString(append(append([]byte(nil), raw...), 0)),
		tokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:27]),
		tokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:28]),
		tokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:29]),
	} {
		if g, err := s.Open(forged, t0); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("Open(%q) = %+v, %v", forged, g, err)
		}
	}
}

// TestOpenTamperedToken changes every character of the token string to
// every other character of the base64url alphabet, one at a time: no other
// string may open (a token is the only spelling of its grant).
func TestOpenTamperedToken(t *testing.T) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	s := mustSealer(t, testKey)
	// Grants of three lengths so that the base64 text ends with 0, 2 and
	// 4 unused bits.
	for _, auth := range []string{"Bearer a", "Bearer ab", "Bearer abc"} {
		g := testGrant()
		g.Authorization = auth
		tok, err := s.Seal(g)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(tok); i++ {
			for _, c := range []byte(alphabet + ".=+/ \x00\xff") {
				if c == tok[i] {
					continue
				}
				forged := tok[:i] + string(c) + tok[i+1:]
				if got, err := s.Open(forged, t0); !errors.Is(err, ErrInvalidToken) {
					t.Errorf("token %q with byte %d (%q) changed to %q opened: %+v, %v", tok, i, tok[i], c, got.Upstream, err)
				}
			}
			flipped := tok[:i] + string(tok[i]^0xff) + tok[i+1:]
			if _, err := s.Open(flipped, t0); !errors.Is(err, ErrInvalidToken) {
				t.Errorf("token with byte %d flipped opened: %v", i, err)
			}
		}
	}
}

func TestOpenMalformed(t *testing.T) {
	s := mustSealer(t, testKey)
	tok, _ := s.Seal(testGrant())
	body := strings.TrimPrefix(tok, tokenPrefix)
	for _, forged := range []string{
		"",
		"dp1.",
		"dp1",
		body,                                 // prefix missing
		"dp2." + body,                        // other version
		"DP1." + body,                        // prefix is case-sensitive
		" " + tok,                            // the caller trims
		tok + " ",                            //
		"dp1." + body + "==",                 // padding
		"dp1." + strings.Repeat("A", 16<<10), // oversize
		"dp1.!!!!",
		"Bearer " + tok,
		"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2ln", // a JWT
	} {
		if g, err := s.Open(forged, t0); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("Open(%.60q) = %+v, %v; want ErrInvalidToken", forged, g, err)
		}
	}
	// A valid token padded beyond the limit is refused before any work.
	big := Grant{Upstream: "u", Authorization: strings.Repeat("y", 16<<10), Expiry: t0.Add(time.Hour)}
	if bigTok, err := s.Seal(big); err == nil {
		if _, err := s.Open(bigTok, t0); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("an oversize token opened: %v", err)
		}
	}
}

// TestOpenNotJSON: a token sealed under the right key whose plaintext is
// not a grant is refused.
func TestOpenNotJSON(t *testing.T) {
	s := mustSealer(t, testKey)
	nonce := make([]byte, s.aead.NonceSize())
	sealed := s.aead.Seal(nonce, nonce, []byte("not json"), []byte(tokenPrefix))
	tok := tokenPrefix + base64.RawURLEncoding.EncodeToString(sealed)
	if g, err := s.Open(tok, t0); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("Open(non-JSON plaintext) = %+v, %v", g, err)
	}
	// Sealed without the prefix as additional data: refused.
	sealed = s.aead.Seal(nonce, nonce, []byte(`{"u":"x","e":"2999-01-01T00:00:00Z"}`), nil)
	tok = tokenPrefix + base64.RawURLEncoding.EncodeToString(sealed)
	if g, err := s.Open(tok, t0); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("Open(sealed without additional data) = %+v, %v", g, err)
	}
}

func FuzzOpen(f *testing.F) {
	s := mustSealer(f, testKey)
	// Fuzz workers run this setup each in their own process: the valid
	// token must be the same in all of them, so seal with a fixed nonce.
	plain, err := json.Marshal(testGrant())
	if err != nil {
		f.Fatal(err)
	}
	nonce := make([]byte, s.aead.NonceSize())
	valid := tokenPrefix + base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, []byte(tokenPrefix)))
	if _, err := s.Open(valid, t0); err != nil {
		f.Fatal(err)
	}
	body := strings.TrimPrefix(valid, tokenPrefix)
	for _, seed := range []string{
		valid, body, "dp1.", "dp1.AAAA", "dp1." + body[:len(body)-1], "dp1." + body + "A",
		valid[:len(valid)-1] + "B", "dp1." + body[:40] + "\n" + body[40:], "Bearer x",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		g, err := s.Open(tok, t0)
		if err != nil {
			if !errors.Is(err, ErrInvalidToken) || !reflect.DeepEqual(g, Grant{}) {
				t.Fatalf("Open(%q) = %+v, %v", tok, g, err)
			}
			return
		}
		// Only the token that was sealed opens. (Base64 decoding
		// ignores CR and LF, which HTTP header values cannot hold.)
		if strings.NewReplacer("\r", "", "\n", "").Replace(tok) != valid {
			t.Fatalf("Open(%q) succeeded with %+v", tok, g)
		}
	})
}

// TestOpenRemembersButStillExpires: a token opened once opens again from
// the memo, and still expires on time there.
func TestOpenRemembersButStillExpires(t *testing.T) {
	s, err := NewSealer([]byte("a test key of more than sixteen bytes"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := s.Seal(Grant{Upstream: "u", Scopes: []string{"repository:a:pull"}, Expiry: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		g, err := s.Open(tok, now)
		if err != nil || g.Upstream != "u" || len(g.Scopes) != 1 {
			t.Fatalf("Open = %+v, %v", g, err)
		}
	}
	if _, ok := s.opened[tok]; !ok {
		t.Fatal("an opened token was not remembered")
	}
	if _, err := s.Open(tok, now.Add(2*time.Minute)); err != ErrInvalidToken {
		t.Fatalf("a remembered token past its expiry opened: %v", err)
	}
}
