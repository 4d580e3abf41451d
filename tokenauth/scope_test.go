package tokenauth

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseScope(t *testing.T) {
	tests := []struct {
		raw  string
		want Scope // zero: an error
	}{
		{"repository:library/alpine:pull", Scope{"repository", "library/alpine", []string{"pull"}}},
		{"repository:alpine:pull,push", Scope{"repository", "alpine", []string{"pull", "push"}}},
		{"repository:a/b/c/d:*", Scope{"repository", "a/b/c/d", []string{"*"}}},
		{"repository:my.org/my_image__x/y---z:pull", Scope{"repository", "my.org/my_image__x/y---z", []string{"pull"}}},
		{"repository(plugin):vieux/sshfs:pull", Scope{"repository(plugin)", "vieux/sshfs", []string{"pull"}}},
		{"registry:catalog:*", Scope{"registry", "catalog", []string{"*"}}},
		{"registry:catalog:search", Scope{"registry", "catalog", []string{"search"}}},
		{"aws:public.ecr.aws:pull", Scope{"aws", "public.ecr.aws", []string{"pull"}}},
		{"registry:a:b:pull", Scope{"registry", "a:b", []string{"pull"}}},
		{"repository:" + strings.Repeat("a", 255) + ":pull", Scope{"repository", strings.Repeat("a", 255), []string{"pull"}}},
		{"repository:a:pull,pull", Scope{"repository", "a", []string{"pull", "pull"}}},

		// Not three parts.
		{"", Scope{}},
		{"repository", Scope{}},
		{"repository:alpine", Scope{}},
		{"aws", Scope{}},
		// Bad type.
		{":alpine:pull", Scope{}},
		{"Repository:alpine:pull", Scope{}},
		{"repo sitory:alpine:pull", Scope{}},
		{"repository():alpine:pull", Scope{}},
		{"repository(Plugin):alpine:pull", Scope{}},
		{"repository(a)(b):alpine:pull", Scope{}},
		// Bad repository names.
		{"repository::pull", Scope{}},
		{"repository:Alpine:pull", Scope{}},
		{"repository:library/:pull", Scope{}},
		{"repository:/alpine:pull", Scope{}},
		{"repository:a//b:pull", Scope{}},
		{"repository:-a:pull", Scope{}},
		{"repository:a___b:pull", Scope{}},
		{"repository:localhost:5000/a:pull", Scope{}},
		{"repository:a b:pull", Scope{}},
		{"repository:" + strings.Repeat("a", 256) + ":pull", Scope{}},
		{"repository(plugin):A:pull", Scope{}},
		// Bad other names.
		{"registry::*", Scope{}},
		{"registry:a b:*", Scope{}},
		{"registry:a\"b:*", Scope{}},
		{"registry:a\nb:*", Scope{}},
		// Bad actions.
		{"repository:alpine:", Scope{}},
		{"repository:alpine:pull,", Scope{}},
		{"repository:alpine:,pull", Scope{}},
		{"repository:alpine:PULL", Scope{}},
		{"repository:alpine:pull push", Scope{}},
		{"repository:alpine:pull;push", Scope{}},
		{"repository:alpine:**", Scope{}},
		{"repository:alpine:pull*", Scope{}},
		{"repository:alpine:pull\n", Scope{}},
		// Too long.
		{"registry:" + strings.Repeat("a", 500) + ":pull", Scope{}},
	}
	for _, tt := range tests {
		got, err := ParseScope(tt.raw)
		if tt.want.Type == "" {
			if err == nil {
				t.Errorf("ParseScope(%q) = %#v, want an error", tt.raw, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseScope(%q): %v", tt.raw, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseScope(%q) = %#v, want %#v", tt.raw, got, tt.want)
		}
		if got.String() != tt.raw {
			t.Errorf("ParseScope(%q).String() = %q", tt.raw, got.String())
		}
	}
}

func TestScopeString(t *testing.T) {
	s := Scope{Type: "repository", Name: "library/alpine", Actions: []string{"pull", "push"}}
	if got := s.String(); got != "repository:library/alpine:pull,push" {
		t.Errorf("String() = %q", got)
	}
}

func FuzzParseScope(f *testing.F) {
	for _, s := range []string{
		"repository:library/alpine:pull", "repository(plugin):a/b:pull,push",
		"registry:catalog:*", "registry:a:b:c", "::", "repository:A:pull", "a:b:",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		s, err := ParseScope(raw)
		if err != nil {
			return
		}
		if s.String() != raw {
			t.Fatalf("ParseScope(%q).String() = %q", raw, s.String())
		}
		again, err := ParseScope(s.String())
		if err != nil || !reflect.DeepEqual(again, s) {
			t.Fatalf("ParseScope(%q) = %#v, again %#v, %v", raw, s, again, err)
		}
		if s.Type == "" || s.Name == "" || len(s.Actions) == 0 {
			t.Fatalf("ParseScope(%q) = %#v has an empty part", raw, s)
		}
		// Nothing that could split a header or a query apart.
		if strings.ContainsAny(raw, " \t\r\n\"") {
			t.Fatalf("ParseScope(%q) accepted whitespace or a quote", raw)
		}
		if strings.HasPrefix(s.Type, "repository") && strings.ContainsAny(s.Name, ":@") {
			t.Fatalf("ParseScope(%q): repository name %q", raw, s.Name)
		}
	})
}
