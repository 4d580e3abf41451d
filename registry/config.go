package registry

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// The checks of a routing configuration, shared by the Caddyfile parser
// (which makes them line by line, to point at the offending line) and the
// handler's validation of a configuration however it was written.

// CheckDomain reports whether domain can carry the seeds' host table: a
// DNS name (letters, digits, hyphens, dots), not an IP address.
func CheckDomain(domain string) error {
	if !isDNSName(domain) {
		return fmt.Errorf("invalid domain '%s': want a DNS name such as example.com", domain)
	}
	return nil
}

// CheckRouteHost reports whether host can be routed: a host name or an IP
// address, without port or brackets.
func CheckRouteHost(host string) error {
	if !isDNSName(host) && net.ParseIP(host) == nil {
		return fmt.Errorf("invalid route host '%s': want a host name or IP address without port", host)
	}
	return nil
}

// ParseOverride checks that name is a well-known registry name (or one of
// its aliases) and rawURL a base URL to point it at, and returns the
// canonical name.
func ParseOverride(name, rawURL string) (string, error) {
	up, err := ParseUpstream(name, nil)
	if err != nil || strings.Contains(name, "://") {
		return "", fmt.Errorf("upstream '%s' is not a well-known registry name; want one of %s",
			name, strings.Join(WellKnownNames(), ", "))
	}
	if _, err := ParseUpstream(up.Name, map[string]string{up.Name: rawURL}); err != nil {
		return "", err
	}
	return up.Name, nil
}

// Validate checks cfg as the Caddyfile does: every upstream parses, the
// domain and the route hosts are valid, no host is routed twice and no
// registry overridden twice (names and hosts compared as they are
// normalised, case and aliases aside), and something is routed at all.
func (cfg RouterConfig) Validate() error {
	overridden := make(map[string]string, len(cfg.Overrides))
	for name, rawURL := range cfg.Overrides {
		canonical, err := ParseOverride(name, rawURL)
		if err != nil {
			return err
		}
		if other, ok := overridden[canonical]; ok {
			return fmt.Errorf("upstream '%s' already specified (as '%s')", name, other)
		}
		overridden[canonical] = name
	}
	if cfg.Default != "" {
		if _, err := ParseUpstream(cfg.Default, cfg.Overrides); err != nil {
			return fmt.Errorf("upstream: %w", err)
		}
	}
	if cfg.Domain != "" {
		if err := CheckDomain(cfg.Domain); err != nil {
			return err
		}
	}
	routed := make(map[string]string, len(cfg.Routes))
	for host, upstream := range cfg.Routes {
		if err := CheckRouteHost(host); err != nil {
			return err
		}
		if other, ok := routed[strings.ToLower(host)]; ok {
			return fmt.Errorf("duplicate route for host '%s' (and '%s')", host, other)
		}
		routed[strings.ToLower(host)] = host
		if _, err := ParseUpstream(upstream, cfg.Overrides); err != nil {
			return fmt.Errorf("route %s: %w", host, err)
		}
	}
	if cfg.Fallback != "" {
		if _, err := ParseUpstream(cfg.Fallback, cfg.Overrides); err != nil {
			return fmt.Errorf("fallback: %w", err)
		}
	}
	if cfg.Default == "" && cfg.Domain == "" && len(cfg.Routes) == 0 && cfg.Fallback == "" {
		return errors.New("no upstream: give one, a domain, a route or a fallback")
	}
	return nil
}

// isDNSName reports whether s is a plausible DNS name: dot-separated labels
// of 1 to 63 letters, digits and inner hyphens, 253 characters at most, and
// not a dotted number (an IPv4 address is no domain).
func isDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for _, label := range labels {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}
