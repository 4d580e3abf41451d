package registry

import (
	"strings"
	"testing"
)

func TestRulesRefuse(t *testing.T) {
	rt, err := NewRouter(RouterConfig{Domain: "example.com"})
	if err != nil {
		t.Fatal(err)
	}
	rules, err := NewRules(rt, nil, []RuleConfig{
		{Action: "allow", Upstream: "docker.io", Patterns: []string{"library/*", "bitnami/**", "team/app-?"}},
		{Action: "deny", Upstream: "index.docker.io", Patterns: []string{"library/evil*"}},
		{Action: "deny", Upstream: "ghcr.io", Patterns: []string{"somebody/*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	hub, _ := rt.ByName("docker.io")
	ghcr, _ := rt.ByName("ghcr.io")
	quay, _ := rt.ByName("quay.io")
	tests := []struct {
		up      Upstream
		name    string
		refused string // a part of the message; empty: served
	}{
		{hub, "library/alpine", ""},
		{hub, "library/alpine/extra", "no allow rule of docker.io"}, // * stays within a component
		{hub, "bitnami/redis", ""},
		{hub, "bitnami/charts/redis", ""}, // ** crosses components
		{hub, "team/app-1", ""},
		{hub, "team/app-12", "no allow rule"}, // ? is one character
		{hub, "library/evil", "'deny index.docker.io library/evil*'"},
		{hub, "library/evilcorp", "'deny index.docker.io library/evil*'"}, // deny wins over allow
		{hub, "other/app", "'allow docker.io library/* bitnami/** team/app-?'"},
		{ghcr, "somebody/tool", "'deny ghcr.io somebody/*'"},
		{ghcr, "somebody/tool/sub", ""}, // only deny rules: the rest is served
		{ghcr, "someone/tool", ""},
		{quay, "anything/at-all", ""}, // no rules
	}
	for _, tt := range tests {
		e := rules.Refuse(tt.up, tt.name)
		switch {
		case tt.refused == "" && e != nil:
			t.Errorf("%s %s refused: %v", tt.up.Name, tt.name, e)
		case tt.refused != "" && e == nil:
			t.Errorf("%s %s served, want refused", tt.up.Name, tt.name)
		case e != nil && (e.Status != 403 || e.Code != CodeDenied || !strings.Contains(e.Message, tt.refused)):
			t.Errorf("%s %s: %d %s %q, want 403 DENIED mentioning %s", tt.up.Name, tt.name, e.Status, e.Code, e.Message, tt.refused)
		}
	}
	var none *Rules
	if none.Refuse(hub, "anything/else") != nil {
		t.Error("no rules refused a name")
	}
}
