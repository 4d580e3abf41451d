package tokenauth

import (
	"sort"
	"strings"
)

// Challenge is one WWW-Authenticate challenge: a scheme (Bearer, Basic) and
// its auth-params (realm, service, scope, error).
type Challenge struct {
	Scheme string
	Params map[string]string
}

// Realm returns the realm parameter.
func (c Challenge) Realm() string { return c.Params["realm"] }

// Service returns the service parameter.
func (c Challenge) Service() string { return c.Params["service"] }

// IsBearer reports whether the challenge asks for a bearer token.
func (c Challenge) IsBearer() bool { return strings.EqualFold(c.Scheme, "Bearer") }

// IsBasic reports whether the challenge asks for Basic credentials.
func (c Challenge) IsBasic() bool { return strings.EqualFold(c.Scheme, "Basic") }

// String formats the challenge as a WWW-Authenticate value, parameters in a
// stable order (realm, service, scope, error, then the rest sorted).
func (c Challenge) String() string {
	var b strings.Builder
	b.WriteString(c.Scheme)
	first := true
	write := func(k, v string) {
		if first {
			b.WriteByte(' ')
			first = false
		} else {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteString(`="`)
		b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v))
		b.WriteByte('"')
	}
	done := map[string]bool{}
	for _, k := range []string{"realm", "service", "scope", "error"} {
		if v, ok := c.Params[k]; ok {
			write(k, v)
			done[k] = true
		}
	}
	rest := make([]string, 0, len(c.Params))
	for k := range c.Params {
		if !done[k] {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		write(k, c.Params[k])
	}
	return b.String()
}

// ParseChallenges parses WWW-Authenticate header values. It is lenient in
// what it accepts (registries differ in quoting and spacing) and never
// panics; malformed parts are skipped.
func ParseChallenges(values []string) []Challenge {
	var out []Challenge
	for _, v := range values {
		out = append(out, parseChallengeList(v)...)
	}
	return out
}

func parseChallengeList(s string) []Challenge {
	var out []Challenge
	p := parser{s: s}
	for {
		p.skipSpaceAndCommas()
		if p.done() {
			return out
		}
		scheme := p.token()
		if scheme == "" {
			// Not a token: skip one byte so we always progress.
			p.i++
			continue
		}
		c := Challenge{Scheme: scheme, Params: map[string]string{}}
		// auth-params: key=value pairs separated by commas, until the
		// next token that is not followed by '=' (the next scheme).
		for {
			p.skipSpaceAndCommas()
			save := p.i
			key := p.token()
			if key == "" {
				break
			}
			p.skipSpace()
			if p.done() || p.s[p.i] != '=' {
				// A new scheme starts here (or token68, which
				// registries do not use): rewind.
				p.i = save
				break
			}
			p.i++ // '='
			p.skipSpace()
			c.Params[strings.ToLower(key)] = p.value()
		}
		out = append(out, c)
	}
}

type parser struct {
	s string
	i int
}

func (p *parser) done() bool { return p.i >= len(p.s) }

func (p *parser) skipSpace() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *parser) skipSpaceAndCommas() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t' || p.s[p.i] == ',') {
		p.i++
	}
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func (p *parser) token() string {
	start := p.i
	for !p.done() && isTokenChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

func (p *parser) value() string {
	if p.done() {
		return ""
	}
	if p.s[p.i] != '"' {
		start := p.i
		for !p.done() && p.s[p.i] != ',' && p.s[p.i] != ' ' && p.s[p.i] != '\t' {
			p.i++
		}
		return p.s[start:p.i]
	}
	p.i++ // opening quote
	var b strings.Builder
	for !p.done() {
		c := p.s[p.i]
		p.i++
		switch c {
		case '\\':
			if !p.done() {
				b.WriteByte(p.s[p.i])
				p.i++
			}
		case '"':
			return b.String()
		default:
			b.WriteByte(c)
		}
	}
	return b.String() // unterminated: take what there is
}
