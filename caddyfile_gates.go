package dockerproxy

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// The Caddyfile subdirectives of a private site:
//
//	users {
//		<name> <hash>
//		...
//	}
//	allow <upstream> <pattern>...
//	deny <upstream> <pattern>...

// parseUsers parses "users { <name> <hash> ... }"; the current token is
// "users".
func (h *Handler) parseUsers(d *caddyfile.Dispenser) error {
	if h.Users != nil {
		return d.Errf("users already specified")
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	users := []User{}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if name == "{" {
			return d.Errf("unexpected block: a user is <name> <hash>")
		}
		if err := checkUserName(name); err != nil {
			return d.Errf("%v", err)
		}
		if seen[name] {
			return d.Errf("user '%s' already specified", name)
		}
		seen[name] = true
		if !d.NextArg() {
			return d.ArgErr()
		}
		hash := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		if !hasPlaceholder(hash) {
			if _, err := parseHash(name, hash); err != nil {
				return d.Errf("%v", err)
			}
		}
		users = append(users, User{Name: name, Hash: hash})
	}
	if len(users) == 0 {
		return d.Errf("%v", errUsersEmpty)
	}
	h.Users = users
	return nil
}

// parseRule parses "allow|deny <upstream> <pattern>..."; the current
// token is the action. Whether the handler serves the upstream is known
// only at the end of the block: checkRuleUpstreams does that.
func (h *Handler) parseRule(d *caddyfile.Dispenser) error {
	rule := registry.RuleConfig{Action: d.Val()}
	if !d.NextArg() {
		return d.ArgErr()
	}
	up, err := h.parseUpstreamArg(d)
	if err != nil {
		return err
	}
	rule.Upstream = d.Val()
	for d.NextArg() {
		if err := registry.CheckRulePattern(up, d.Val()); err != nil {
			return d.Errf("%v", err)
		}
		rule.Patterns = append(rule.Patterns, d.Val())
	}
	if len(rule.Patterns) == 0 {
		return d.ArgErr()
	}
	h.Rules = append(h.Rules, rule)
	return nil
}

// checkRuleUpstreams checks, once the whole block is read, that every
// rule is for an upstream the handler serves; an error points at the
// rule's line.
func (h *Handler) checkRuleUpstreams(d *caddyfile.Dispenser) error {
	if len(h.Rules) == 0 {
		return nil
	}
	router, err := registry.NewRouter(h.routerConfig())
	if err != nil {
		return nil // reported by Validate with its own message
	}
	for i, rule := range h.Rules {
		if err := registry.CheckRule(router, h.Upstreams, rule); err != nil {
			// Find the i-th rule line again (a line that starts with
			// allow or deny), for its line number.
			d.Reset()
			for n, prevLine := -1, -1; d.Next(); {
				first := d.Line() != prevLine
				prevLine = d.Line()
				if first && (d.Val() == "allow" || d.Val() == "deny") {
					if n++; n == i {
						d.NextArg() // the upstream
						break
					}
				}
			}
			return d.Errf("%v", err)
		}
	}
	return nil
}
