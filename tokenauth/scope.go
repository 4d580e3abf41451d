package tokenauth

import (
	"fmt"
	"regexp"
	"strings"
)

// Scope is one access request of the token spec:
// resourcetype[(class)]:resourcename:action[,action...].
type Scope struct {
	Type    string // "repository", "registry"
	Name    string // a repository name, which may contain ':' only for ports (not here)
	Actions []string
}

func (s Scope) String() string {
	return s.Type + ":" + s.Name + ":" + strings.Join(s.Actions, ",")
}

var (
	scopeType   = regexp.MustCompile(`^[a-z0-9]+(?:\([a-z0-9]+\))?$`)
	scopeName   = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	scopeAction = regexp.MustCompile(`^(?:[a-z]+|\*)$`)
)

// ParseScope parses and validates one scope. Repository names follow the
// distribution grammar, so nothing malformed is forwarded upstream.
func ParseScope(raw string) (Scope, error) {
	if len(raw) > 512 {
		return Scope{}, fmt.Errorf("scope too long")
	}
	first := strings.IndexByte(raw, ':')
	last := strings.LastIndexByte(raw, ':')
	if first < 0 || first == last {
		return Scope{}, fmt.Errorf("scope %q is not type:name:actions", raw)
	}
	s := Scope{Type: raw[:first], Name: raw[first+1 : last]}
	if !scopeType.MatchString(s.Type) {
		return Scope{}, fmt.Errorf("scope %q has an invalid resource type", raw)
	}
	// Every type that starts as a repository's does is one here (the
	// proxy normalises repository names by that prefix): its name must be
	// a repository name.
	if strings.HasPrefix(s.Type, "repository") {
		if len(s.Name) > 255 || !scopeName.MatchString(s.Name) {
			return Scope{}, fmt.Errorf("scope %q has an invalid repository name", raw)
		}
	} else if s.Name == "" || strings.ContainsAny(s.Name, " \t\r\n\"") {
		return Scope{}, fmt.Errorf("scope %q has an invalid resource name", raw)
	}
	for _, a := range strings.Split(raw[last+1:], ",") {
		if !scopeAction.MatchString(a) {
			return Scope{}, fmt.Errorf("scope %q has an invalid action %q", raw, a)
		}
		s.Actions = append(s.Actions, a)
	}
	return s, nil
}
