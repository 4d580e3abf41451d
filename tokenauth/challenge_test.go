package tokenauth

import (
	"reflect"
	"testing"
)

func ch(scheme string, kv ...string) Challenge {
	c := Challenge{Scheme: scheme, Params: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		c.Params[kv[i]] = kv[i+1]
	}
	return c
}

func TestParseChallenges(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   []Challenge
	}{
		{"docker hub", []string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io"`},
			[]Challenge{ch("Bearer", "realm", "https://auth.docker.io/token", "service", "registry.docker.io")}},
		{"docker hub with scope and error", []string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull",error="insufficient_scope"`},
			[]Challenge{ch("Bearer", "realm", "https://auth.docker.io/token", "service", "registry.docker.io", "scope", "repository:library/alpine:pull", "error", "insufficient_scope")}},
		{"ghcr", []string{`Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull"`},
			[]Challenge{ch("Bearer", "realm", "https://ghcr.io/token", "service", "ghcr.io", "scope", "repository:user/image:pull")}},
		{"quay", []string{`Bearer realm="https://quay.io/v2/auth",service="quay.io"`},
			[]Challenge{ch("Bearer", "realm", "https://quay.io/v2/auth", "service", "quay.io")}},
		{"gcr", []string{`Bearer realm="https://gcr.io/v2/token",service="gcr.io"`},
			[]Challenge{ch("Bearer", "realm", "https://gcr.io/v2/token", "service", "gcr.io")}},
		{"registry.k8s.io via artifact registry", []string{`Bearer realm="https://us-west1-docker.pkg.dev/v2/token",service="us-west1-docker.pkg.dev",scope="repository:k8s-artifacts-prod/images/pause:pull"`},
			[]Challenge{ch("Bearer", "realm", "https://us-west1-docker.pkg.dev/v2/token", "service", "us-west1-docker.pkg.dev", "scope", "repository:k8s-artifacts-prod/images/pause:pull")}},
		{"ecr public", []string{`Bearer realm="https://public.ecr.aws/token/",service="public.ecr.aws",scope="aws"`},
			[]Challenge{ch("Bearer", "realm", "https://public.ecr.aws/token/", "service", "public.ecr.aws", "scope", "aws")}},
		{"ecr private basic", []string{`Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com"`},
			[]Challenge{ch("Basic", "realm", "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/", "service", "ecr.amazonaws.com")}},
		{"distribution htpasswd", []string{`Basic realm="Registry Realm"`},
			[]Challenge{ch("Basic", "realm", "Registry Realm")}},
		{"several scopes in one param", []string{`Bearer realm="https://r/token",scope="repository:a:pull repository:b:pull,push"`},
			[]Challenge{ch("Bearer", "realm", "https://r/token", "scope", "repository:a:pull repository:b:pull,push")}},
		{"two challenges in one header", []string{`Basic realm="x", Bearer realm="https://r/token",service="s"`},
			[]Challenge{ch("Basic", "realm", "x"), ch("Bearer", "realm", "https://r/token", "service", "s")}},
		{"two challenges, bearer first", []string{`Bearer realm="https://r/token",service="s", Basic realm="x"`},
			[]Challenge{ch("Bearer", "realm", "https://r/token", "service", "s"), ch("Basic", "realm", "x")}},
		{"challenges in several headers", []string{`Bearer realm="https://r/token"`, `Basic realm="x"`},
			[]Challenge{ch("Bearer", "realm", "https://r/token"), ch("Basic", "realm", "x")}},
		{"escaped quotes and backslashes", []string{`Bearer realm="a \"quoted\" realm",service="back\\slash"`},
			[]Challenge{ch("Bearer", "realm", `a "quoted" realm`, "service", `back\slash`)}},
		{"escaped ordinary char", []string{`Bearer realm="\a\b"`},
			[]Challenge{ch("Bearer", "realm", "ab")}},
		{"comma inside quotes", []string{`Bearer realm="https://r/token",scope="repository:a:pull,push"`},
			[]Challenge{ch("Bearer", "realm", "https://r/token", "scope", "repository:a:pull,push")}},
		{"unquoted values", []string{`Bearer realm=https://r/token,service=registry`},
			[]Challenge{ch("Bearer", "realm", "https://r/token", "service", "registry")}},
		{"mixed quoting", []string{`Bearer realm="https://r/token", service=registry ,error=invalid_token`},
			[]Challenge{ch("Bearer", "realm", "https://r/token", "service", "registry", "error", "invalid_token")}},
		{"spaces around equals", []string{`Bearer realm = "https://r/token" , service =  "s"`},
			[]Challenge{ch("Bearer", "realm", "https://r/token", "service", "s")}},
		{"tabs and leading space", []string{"  \tBearer\trealm=\"https://r/token\",\tservice=\"s\"  "},
			[]Challenge{ch("Bearer", "realm", "https://r/token", "service", "s")}},
		{"tab after unquoted value", []string{"Bearer realm=https://r/token\tservice=s"},
			[]Challenge{ch("Bearer", "realm", "https://r/token", "service", "s")}},
		{"no space after comma", []string{`Bearer realm="a",service="b",scope="c"`},
			[]Challenge{ch("Bearer", "realm", "a", "service", "b", "scope", "c")}},
		{"leading and doubled commas", []string{`, ,Bearer realm="a",,service="b",`},
			[]Challenge{ch("Bearer", "realm", "a", "service", "b")}},
		{"case of scheme kept, keys lowered", []string{`bearer Realm="a",SERVICE="b"`},
			[]Challenge{ch("bearer", "realm", "a", "service", "b")}},
		{"duplicate param: last wins", []string{`Bearer realm="a",realm="b"`},
			[]Challenge{ch("Bearer", "realm", "b")}},
		{"empty values", []string{`Bearer realm="",service=`},
			[]Challenge{ch("Bearer", "realm", "", "service", "")}},
		{"scheme alone", []string{`Negotiate`}, []Challenge{ch("Negotiate")}},
		{"token68", []string{`Basic dXNlcjpwYXNz`}, []Challenge{ch("Basic"), ch("dXNlcjpwYXNz")}},
		{"unterminated quote", []string{`Bearer realm="https://r/tok`},
			[]Challenge{ch("Bearer", "realm", "https://r/tok")}},
		{"trailing backslash", []string{`Bearer realm="a\`}, []Challenge{ch("Bearer", "realm", "a")}},
		{"empty", []string{""}, nil},
		{"nil", nil, nil},
		{"only separators", []string{" , ,\t"}, nil},
		{"garbage bytes skipped", []string{`@@@ Bearer realm="a"`}, []Challenge{ch("Bearer", "realm", "a")}},
		{"non-token between", []string{`Bearer realm="a"; Basic realm="b"`},
			[]Challenge{ch("Bearer", "realm", "a"), ch("Basic", "realm", "b")}},
		{"utf-8 in value", []string{`Bearer realm="https://exämple/tøken"`},
			[]Challenge{ch("Bearer", "realm", "https://exämple/tøken")}},
	}
	for _, tt := range tests {
		got := ParseChallenges(tt.values)
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: ParseChallenges(%q) =\n\t%#v\nwant\n\t%#v", tt.name, tt.values, got, tt.want)
		}
	}
}

func TestChallengeAccessors(t *testing.T) {
	c := ParseChallenges([]string{`BEARER realm="https://r/token",service="svc"`})[0]
	if !c.IsBearer() || c.IsBasic() || c.Realm() != "https://r/token" || c.Service() != "svc" {
		t.Errorf("accessors of %#v", c)
	}
	b := ParseChallenges([]string{`basic realm="x"`})[0]
	if b.IsBearer() || !b.IsBasic() || b.Service() != "" {
		t.Errorf("accessors of %#v", b)
	}
	var zero Challenge
	if zero.Realm() != "" || zero.IsBearer() || zero.IsBasic() {
		t.Errorf("zero challenge: %#v", zero)
	}
}

func TestChallengeString(t *testing.T) {
	tests := []struct {
		c    Challenge
		want string
	}{
		{ch("Bearer", "realm", "https://proxy.example/v2/auth", "service", "registry.docker.io"),
			`Bearer realm="https://proxy.example/v2/auth",service="registry.docker.io"`},
		// realm, service, scope, error first, then the rest sorted.
		{ch("Bearer", "zeta", "z", "error", "invalid_token", "alpha", "a", "scope", "repository:a:pull", "service", "s", "realm", "r"),
			`Bearer realm="r",service="s",scope="repository:a:pull",error="invalid_token",alpha="a",zeta="z"`},
		{ch("Basic", "realm", `a "b" \c`), `Basic realm="a \"b\" \\c"`},
		{ch("Basic"), `Basic`},
		{Challenge{Scheme: "Bearer"}, `Bearer`},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("String() = %s, want %s", got, tt.want)
		}
		back := ParseChallenges([]string{tt.c.String()})
		want := tt.c
		if want.Params == nil {
			want.Params = map[string]string{}
		}
		if len(back) != 1 || !reflect.DeepEqual(back[0], want) {
			t.Errorf("ParseChallenges(%s) = %#v, want %#v", tt.c.String(), back, want)
		}
	}
}

// TestChallengeStringJoin: several challenges formatted and joined with ", "
// parse back to the same list (what a proxy sends in one header).
func TestChallengeStringJoin(t *testing.T) {
	list := []Challenge{
		ch("Bearer", "realm", "https://r/token", "service", "s,t", "scope", "repository:a:pull,push"),
		ch("Basic", "realm", `x"y`),
		ch("Bearer"),
		ch("Bearer", "realm", ""),
	}
	var joined string
	for i, c := range list {
		if i > 0 {
			joined += ", "
		}
		joined += c.String()
	}
	if got := ParseChallenges([]string{joined}); !reflect.DeepEqual(got, list) {
		t.Errorf("ParseChallenges(%q) =\n\t%#v\nwant\n\t%#v", joined, got, list)
	}
}

func FuzzParseChallenges(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`,
		`Basic realm="x", Bearer realm="https://r/token",service="s"`,
		`Bearer realm="a \"q\" \\ b",service=unquoted, error = "invalid_token"`,
		`Basic dXNlcjpwYXNz==`,
		`Bearer realm="unterminated`,
		"\tBearer\t,realm=\"\\",
		`@@ ;; ==`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		list := ParseChallenges([]string{s})
		for _, c := range list {
			if c.Scheme == "" || c.Params == nil {
				t.Fatalf("ParseChallenges(%q): challenge %#v", s, c)
			}
			for k := range c.Params {
				if k == "" {
					t.Fatalf("ParseChallenges(%q): empty key in %#v", s, c)
				}
			}
			// Formatting and parsing again gives the same challenge.
			back := ParseChallenges([]string{c.String()})
			if len(back) != 1 || !reflect.DeepEqual(back[0], c) {
				t.Fatalf("ParseChallenges(%q) -> %#v -> %s -> %#v", s, c, c.String(), back)
			}
		}
		// And the whole list, joined as one header value.
		if len(list) > 0 {
			var joined string
			for i, c := range list {
				if i > 0 {
					joined += ", "
				}
				joined += c.String()
			}
			if back := ParseChallenges([]string{joined}); !reflect.DeepEqual(back, list) {
				t.Fatalf("ParseChallenges(%q) -> %q -> %#v, want %#v", s, joined, back, list)
			}
		}
	})
}
