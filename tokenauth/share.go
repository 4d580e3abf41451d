package tokenauth

import (
	"context"
	"time"
)

// Sharing tokens across repositories.
//
// A token service answers a request for one repository's pull scope with a
// token for that scope. Some upstreams check exactly that (Docker Hub,
// ghcr.io, quay.io: their tokens list the repositories they grant); others
// accept an anonymous token for any public repository. Without knowing
// which, every new repository name costs a token request, and for a proxy
// that sees many names, the cache holds one token per name.
//
// FetchShared learns which kind an upstream is, per realm, service and
// identity (a "group"): it lends the group's latest token for another
// repository's pull scope once (a probe), and the caller reports with Lent
// whether the upstream accepted it. Accepted: the group's tokens are lent
// from then on, and new names cost no token request. Refused: the group
// fetches a token per repository for a while (narrowFor), then probes
// again, so an upstream that changes, or a probe that hit a private
// repository, is not taken for the rule. A refused probe costs the
// upstream one request answered 401 per narrowFor.
//
// Lending never widens access: the token is the proxy's own identity's
// (anonymous, or the configured credentials), the upstream decides whether
// it is good for the repository, and a refusal falls back to the
// repository's own token. Tokens that carry a client's credentials are
// never lent (the token endpoint uses Fetch).

// narrowFor is how long a group whose lent token was refused fetches one
// token per repository before it probes again.
const narrowFor = time.Hour

// probeTimeout is how long a probe's verdict is waited for: a caller that
// never reports (its request failed) must not stop lending for good.
const probeTimeout = time.Minute

// maxGroups bounds the groups: one per realm, service and proxy identity,
// so a handful in practice.
const maxGroups = 256

type shareState int

const (
	shareUnknown shareState = iota // next lend is a probe
	shareProbing                   // one lent token awaits its verdict
	shareWide                      // the upstream accepts lent tokens
	shareNarrow                    // it does not, until narrowUntil
)

// tokenGroup is what FetchShared knows of the tokens of one realm,
// service and identity.
type tokenGroup struct {
	state       shareState
	since       time.Time // of the state (probing, narrow)
	latest      Token     // the last token fetched for the group
	lastUsedFor time.Time
}

// FetchShared is Fetch for the proxy's own identity, for one repository
// pull scope, by a caller that reports with Lent whether the upstream
// accepted a lent token (lent true) and fetches the scope's own token with
// Fetch when it did not.
func (f *Fetcher) FetchShared(ctx context.Context, ch Challenge, scopes []string, creds *Credentials) (tok Token, lent bool, err error) {
	key := cacheKey(ch, scopes, creds)
	if t, ok := f.lookup(key); ok {
		return t, false, nil
	}
	if len(scopes) == 1 && isPullScope(scopes[0]) {
		if t, ok := f.lend(groupKey(ch, creds)); ok {
			return t, true, nil
		}
	}
	tok, err = f.Fetch(ctx, ch, scopes, creds)
	return tok, false, err
}

// isPullScope reports whether s asks to pull one repository, the only
// access a lent token is tried for.
func isPullScope(s string) bool {
	sc, err := ParseScope(s)
	return err == nil && sc.Type == "repository" && len(sc.Actions) == 1 && sc.Actions[0] == "pull"
}

// lend returns the group's token to try for another repository, if the
// group's state allows, and creates the group so that its next fetched
// token is recorded.
func (f *Fetcher) lend(group string) (Token, bool) {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.groups[group]
	if g == nil {
		if f.groups == nil {
			f.groups = map[string]*tokenGroup{}
		}
		f.pruneGroupsLocked()
		g = &tokenGroup{}
		f.groups[group] = g
	}
	g.lastUsedFor = now
	switch g.state {
	case shareNarrow:
		if now.Sub(g.since) < narrowFor {
			return Token{}, false
		}
		g.state = shareUnknown
	case shareProbing:
		if now.Sub(g.since) < probeTimeout {
			return Token{}, false
		}
		g.state = shareUnknown
	}
	if g.latest.Value == "" || time.Until(g.latest.Expiry) <= 0 {
		return Token{}, false
	}
	if g.state == shareUnknown {
		g.state, g.since = shareProbing, now
	}
	return g.latest, true
}

// Lent reports whether the upstream accepted a token FetchShared lent for
// ch and creds.
func (f *Fetcher) Lent(ch Challenge, creds *Credentials, accepted bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.groups[groupKey(ch, creds)]
	if g == nil {
		return
	}
	switch {
	case accepted:
		g.state = shareWide
	case g.state == shareProbing:
		g.state, g.since = shareNarrow, time.Now()
	case g.state == shareWide:
		// Wide until now: this repository may be private, or the
		// token revoked. Probe again rather than decide on one answer.
		g.state = shareUnknown
	}
}

// pruneGroupsLocked makes room for a group: the groups not used for
// longest go first.
func (f *Fetcher) pruneGroupsLocked() {
	for len(f.groups) >= maxGroups {
		var oldest string
		var at time.Time
		for k, g := range f.groups {
			if oldest == "" || g.lastUsedFor.Before(at) {
				oldest, at = k, g.lastUsedFor
			}
		}
		delete(f.groups, oldest)
	}
}
