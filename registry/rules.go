package registry

// Repository rules: per upstream, which repositories the proxy serves.
// They are checked on the repository name of every request (manifests,
// blobs, tags, referrers) and on every repository scope of a token
// request, before anything goes upstream or comes out of the cache.

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

// RuleConfig is one rule line: allow or deny, an upstream and patterns.
// A pattern is a glob on the repository name as the upstream knows it
// (Docker Hub's official images under library/): * matches within one
// path component, ** across components, ? one character.
type RuleConfig struct {
	// Action is "allow" or "deny".
	Action   string   `json:"action"`
	Upstream string   `json:"upstream"`
	Patterns []string `json:"patterns"`
}

// String is the rule as written in a Caddyfile, for messages.
func (rc RuleConfig) String() string {
	return rc.Action + " " + rc.Upstream + " " + strings.Join(rc.Patterns, " ")
}

// Rules are the compiled rules of a handler, by upstream name.
type Rules struct {
	by map[string]*upstreamRules
}

type upstreamRules struct {
	allow []compiledRule
	deny  []compiledRule
}

type compiledRule struct {
	text     string // the rule as written
	patterns []*regexp.Regexp
}

func (r compiledRule) matches(name string) bool {
	for _, p := range r.patterns {
		if p.MatchString(name) {
			return true
		}
	}
	return false
}

// CheckRulePattern reports whether pattern can match a repository name of
// upstream up: its characters are those of names and wildcards, and with
// each wildcard filled in it reads as a valid name (of two components or
// more on Docker Hub).
func CheckRulePattern(up Upstream, pattern string) error {
	bad := func(why string) error {
		return fmt.Errorf("pattern '%s' cannot match any repository name of %s: %s", pattern, up.Name, why)
	}
	if pattern == "" {
		return bad("it is empty")
	}
	for _, c := range pattern {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.ContainsRune("._-/*?", c)) {
			return bad("names are lower-case letters, digits, '.', '_', '-' and '/' (wildcards: * ** ?)")
		}
	}
	filled := strings.NewReplacer("**", "a", "*", "a", "?", "a").Replace(pattern)
	if err := validateName(filled); err != nil {
		return bad("names are path components of letters and digits separated by '/', '.', '_' or '-'")
	}
	if up.IsDockerHub() && !strings.Contains(pattern, "/") && !strings.Contains(pattern, "**") {
		return bad("Docker Hub names have a namespace (official images are library/<name>)")
	}
	return nil
}

// compileGlob turns a checked pattern into an anchored regexp.
func compileGlob(pattern string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; {
		case c == '*' && i+1 < len(pattern) && pattern[i+1] == '*':
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// NewRules compiles rules for the upstreams rt serves; a rule for any
// other upstream, or with a pattern that cannot match, is an error.
func NewRules(rt *Router, overrides map[string]string, rules []RuleConfig) (*Rules, error) {
	rs := &Rules{by: make(map[string]*upstreamRules)}
	for _, rc := range rules {
		if err := CheckRule(rt, overrides, rc); err != nil {
			return nil, err
		}
		up, _ := ParseUpstream(rc.Upstream, overrides)
		ur := rs.by[up.Name]
		if ur == nil {
			ur = new(upstreamRules)
			rs.by[up.Name] = ur
		}
		cr := compiledRule{text: rc.String()}
		for _, p := range rc.Patterns {
			cr.patterns = append(cr.patterns, compileGlob(p))
		}
		if rc.Action == "allow" {
			ur.allow = append(ur.allow, cr)
		} else {
			ur.deny = append(ur.deny, cr)
		}
	}
	return rs, nil
}

// CheckRule checks one rule against the upstreams rt serves.
func CheckRule(rt *Router, overrides map[string]string, rc RuleConfig) error {
	if rc.Action != "allow" && rc.Action != "deny" {
		return fmt.Errorf("rule action '%s': want allow or deny", rc.Action)
	}
	up, err := ParseUpstream(rc.Upstream, overrides)
	if err != nil {
		return fmt.Errorf("%s: %w", rc.Action, err)
	}
	if _, ok := rt.ByName(up.Name); !ok {
		return fmt.Errorf("%s: upstream %s is not served by this handler (it serves %s)",
			rc.Action, up.Name, strings.Join(rt.Names(), ", "))
	}
	if len(rc.Patterns) == 0 {
		return fmt.Errorf("%s %s: give at least one repository pattern", rc.Action, rc.Upstream)
	}
	for _, p := range rc.Patterns {
		if err := CheckRulePattern(up, p); err != nil {
			return err
		}
	}
	return nil
}

// Refuse returns the refusal of repository name of up, or nil when the
// rules let it through. A deny rule wins over an allow rule; with allow
// rules for an upstream, a name must match one of them.
func (rs *Rules) Refuse(up Upstream, name string) *Error {
	if rs == nil {
		return nil
	}
	ur := rs.by[up.Name]
	if ur == nil {
		return nil
	}
	for _, r := range ur.deny {
		if r.matches(name) {
			return errDenied(up, name, "it matches the rule '"+r.text+"'")
		}
	}
	if len(ur.allow) == 0 {
		return nil
	}
	for _, r := range ur.allow {
		if r.matches(name) {
			return nil
		}
	}
	// Refused: the message lists the allow rules (built only now, off the
	// path of every allowed request).
	texts := make([]string, 0, len(ur.allow))
	for _, r := range ur.allow {
		texts = append(texts, "'"+r.text+"'")
	}
	return errDenied(up, name, "it matches no allow rule of "+up.Name+" ("+strings.Join(texts, ", ")+")")
}

func errDenied(up Upstream, name, why string) *Error {
	return &Error{Status: http.StatusForbidden, Code: CodeDenied,
		Message: "repository " + name + " of " + up.Name + " is not served by this proxy: " + why,
		Detail:  map[string]string{"name": name}}
}
