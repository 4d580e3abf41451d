package dockerproxy

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"

	// The directives and guest modules the golden files use (route,
	// basic_auth, header, file_server, transport http, ...), as in a
	// Caddy binary built with this plugin.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

var updateGolden = flag.Bool("update-golden", false,
	"rewrite the expected JSON of testdata/caddyfile/*.caddyfiletest with what the adapter produces (review the diff!)")

// goldenSeparator separates the Caddyfile from the expected JSON in a
// .caddyfiletest file.
const goldenSeparator = "\n----------\n"

type goldenFile struct {
	path      string
	caddyfile string
	json      string
}

func readGoldenFiles(t *testing.T) []goldenFile {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "caddyfile", "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no golden files in testdata/caddyfile")
	}
	var files []goldenFile
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		caddyfileText, jsonText, ok := strings.Cut(string(data), goldenSeparator)
		if !ok {
			t.Fatalf("%s: no %q line between the Caddyfile and the JSON", path, strings.TrimSpace(goldenSeparator))
		}
		files = append(files, goldenFile{path: path, caddyfile: caddyfileText + "\n", json: strings.TrimSpace(jsonText)})
	}
	return files
}

// TestCaddyfileAdapt checks that each golden Caddyfile adapts to exactly
// the JSON that follows it, as `caddy adapt` would print it.
func TestCaddyfileAdapt(t *testing.T) {
	for _, g := range readGoldenFiles(t) {
		t.Run(filepath.Base(g.path), func(t *testing.T) {
			if *updateGolden {
				adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(g.caddyfile), nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(warnings) > 0 {
					t.Errorf("warnings: %v", warnings)
				}
				var buf bytes.Buffer
				if err := json.Indent(&buf, adapted, "", "\t"); err != nil {
					t.Fatal(err)
				}
				out := strings.TrimSuffix(g.caddyfile, "\n") + goldenSeparator + buf.String() + "\n"
				if err := os.WriteFile(g.path, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !caddytest.CompareAdapt(t, g.path, g.caddyfile, "caddyfile", g.json) {
				t.Error("adapted config differs from the expected JSON")
			}
		})
	}
}

// TestCaddyfileAdaptRoundTrip checks that every docker_proxy handler in the
// golden JSON decodes into Handler with no unknown field and encodes back
// to the same JSON, so the golden files use the config's real field names.
func TestCaddyfileAdaptRoundTrip(t *testing.T) {
	for _, g := range readGoldenFiles(t) {
		t.Run(filepath.Base(g.path), func(t *testing.T) {
			var cfg any
			if err := json.Unmarshal([]byte(g.json), &cfg); err != nil {
				t.Fatalf("expected JSON: %v", err)
			}
			handlers := findHandlers(cfg, "docker_proxy")
			if len(handlers) == 0 {
				t.Fatal("no docker_proxy handler in the expected JSON")
			}
			for _, raw := range handlers {
				delete(raw, "handler")
				want, err := json.Marshal(raw)
				if err != nil {
					t.Fatal(err)
				}
				dec := json.NewDecoder(bytes.NewReader(want))
				dec.DisallowUnknownFields()
				var h Handler
				if err := dec.Decode(&h); err != nil {
					t.Fatalf("decoding %s: %v", want, err)
				}
				got, err := json.Marshal(h)
				if err != nil {
					t.Fatal(err)
				}
				if !jsonEqual(t, got, want) {
					t.Errorf("round trip changed the handler:\n got %s\nwant %s", got, want)
				}
			}
		})
	}
}

// findHandlers returns every JSON object in v whose "handler" is name.
func findHandlers(v any, name string) []map[string]any {
	var found []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == name {
			found = append(found, v)
		}
		for _, child := range v {
			found = append(found, findHandlers(child, name)...)
		}
	case []any:
		for _, child := range v {
			found = append(found, findHandlers(child, name)...)
		}
	}
	return found
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(va, vb)
}

// TestCaddyfileAdaptErrors checks that configuration errors surface when a
// whole Caddyfile is adapted (caddy adapt, caddy validate, caddy run), with
// the file and line of the offending token.
func TestCaddyfileAdaptErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string
	}{
		{
			name: "unknown subdirective",
			input: `example.com {
	docker_proxy docker.io {
		cache_dir /tmp
	}
}`,
			want: []string{"Caddyfile:3", "unknown subdirective 'cache_dir'"},
		},
		{
			name: "bad upstream in route block",
			input: `example.com {
	route {
		docker_proxy dockerhub
	}
}`,
			want: []string{"Caddyfile:3", `unknown upstream "dockerhub"`},
		},
		{
			name: "bad size",
			input: `example.com {
	docker_proxy docker.io {
		cache {
			max_size lots
		}
	}
}`,
			want: []string{"Caddyfile:4", "invalid max_size 'lots'"},
		},
		{
			name: "bad transport option",
			input: `example.com {
	docker_proxy docker.io {
		transport http {
			dial_timeout soon
		}
	}
}`,
			want: []string{"Caddyfile:4", "soon"},
		},
		{
			name: "no upstream at all",
			input: `example.com {
	header X-Registry yes
	docker_proxy
}`,
			want: []string{"Caddyfile:3", "docker_proxy needs an upstream"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tt.input), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				t.Fatal("adapted without error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  Handler
	}{
		{
			name:  "default upstream only",
			input: `docker_proxy ghcr.io`,
			want:  Handler{Upstream: "ghcr.io"},
		},
		{
			name:  "URL upstream",
			input: `docker_proxy http://127.0.0.1:5000`,
			want:  Handler{Upstream: "http://127.0.0.1:5000"},
		},
		{
			name:  "alias upstream kept as written",
			input: `docker_proxy index.docker.io`,
			want:  Handler{Upstream: "index.docker.io"},
		},
		{
			name:  "empty block",
			input: `docker_proxy docker.io { }`,
			want:  Handler{Upstream: "docker.io"},
		},
		{
			name: "domain only, lowercased",
			input: `docker_proxy {
				domain Example.COM
			}`,
			want: Handler{Domain: "example.com"},
		},
		{
			name: "single-label domain",
			input: `docker_proxy {
				domain localhost
			}`,
			want: Handler{Domain: "localhost"},
		},
		{
			name: "fallback only",
			input: `docker_proxy {
				fallback docker.io
			}`,
			want: Handler{Fallback: "docker.io"},
		},
		{
			name: "page off",
			input: `docker_proxy docker.io {
				page off
			}`,
			want: Handler{Upstream: "docker.io", Page: &PageConfig{Disabled: true}},
		},
		{
			name: "page with a template",
			input: `docker_proxy docker.io {
				page {env.PAGE_TEMPLATE}
			}`,
			want: Handler{Upstream: "docker.io", Page: &PageConfig{Template: "{env.PAGE_TEMPLATE}"}},
		},
		{
			name: "everything",
			input: `docker_proxy docker.io {
				domain example.com
				route hub.internal docker.io
				route mirror.internal https://mirror.internal:8443
				upstream index.docker.io http://127.0.0.1:5001/
				upstream ghcr.io https://ghcr-mirror.example.net
				fallback quay.io
				credentials {env.HUB_USER} {env.HUB_TOKEN}
				credentials ghcr.io octocat "{env.GHCR_TOKEN}"
				credentials https://mirror.internal:8443 ci s3cr3t
				auth_key {env.AUTH_KEY}
				cache /var/cache/docker {
					max_size 50GiB
					tag_ttl 1d
				}
				transport http {
					dial_timeout 5s
					versions 1.1 2
				}
			}`,
			want: Handler{
				Upstream: "docker.io",
				Domain:   "example.com",
				Routes: map[string]string{
					"hub.internal":    "docker.io",
					"mirror.internal": "https://mirror.internal:8443",
				},
				Upstreams: map[string]string{
					"docker.io": "http://127.0.0.1:5001/",
					"ghcr.io":   "https://ghcr-mirror.example.net",
				},
				Fallback: "quay.io",
				Credentials: []Credential{
					{Username: "{env.HUB_USER}", Secret: "{env.HUB_TOKEN}"},
					{Upstream: "ghcr.io", Username: "octocat", Secret: "{env.GHCR_TOKEN}"},
					{Upstream: "https://mirror.internal:8443", Username: "ci", Secret: "s3cr3t"},
				},
				AuthKey: "{env.AUTH_KEY}",
				Cache: &CacheConfig{
					Dir:     "/var/cache/docker",
					MaxSize: 50 << 30,
					TagTTL:  caddy.Duration(24 * time.Hour),
				},
				TransportRaw: json.RawMessage(`{"dial_timeout":5000000000,"protocol":"http","versions":["1.1","2"]}`),
			},
		},
		{
			name: "credentials for the default upstream and by name",
			input: `docker_proxy ghcr.io {
				credentials a b
				credentials quay.io c d
			}`,
			want: Handler{
				Upstream: "ghcr.io",
				Credentials: []Credential{
					{Username: "a", Secret: "b"},
					{Upstream: "quay.io", Username: "c", Secret: "d"},
				},
			},
		},
		{
			name: "cache off",
			input: `docker_proxy docker.io {
				cache off
			}`,
			want: Handler{Upstream: "docker.io", Cache: &CacheConfig{Disabled: true}},
		},
		{
			name: "cache with defaults",
			input: `docker_proxy docker.io {
				cache
			}`,
			want: Handler{Upstream: "docker.io", Cache: &CacheConfig{}},
		},
		{
			name: "cache options without a directory",
			input: `docker_proxy docker.io {
				cache {
					tag_ttl 90s
					max_size 1073741824
				}
			}`,
			want: Handler{Upstream: "docker.io", Cache: &CacheConfig{MaxSize: 1 << 30, TagTTL: caddy.Duration(90 * time.Second)}},
		},
		{
			name: "cache negative_ttl",
			input: `docker_proxy docker.io {
				cache {
					negative_ttl 10s
				}
			}`,
			want: Handler{Upstream: "docker.io", Cache: &CacheConfig{NegativeTTL: caddy.Duration(10 * time.Second)}},
		},
		{
			name: "cache negative_ttl 0 is off",
			input: `docker_proxy docker.io {
				cache {
					negative_ttl 0
				}
			}`,
			want: Handler{Upstream: "docker.io", Cache: &CacheConfig{}},
		},
		{
			name: "cache max_size 0 is unbounded",
			input: `docker_proxy docker.io {
				cache /srv/cache {
					max_size 0
				}
			}`,
			want: Handler{Upstream: "docker.io", Cache: &CacheConfig{Dir: "/srv/cache"}},
		},
		{
			name: "cache with a shared tier",
			input: `docker_proxy docker.io {
				cache /var/cache/docker {
					max_size 50GiB
					s3 {
						endpoint https://s3.eu-west-1.amazonaws.com
						bucket docker-cache
						region eu-west-1
						prefix docker_proxy/
						access_key {env.S3_ACCESS_KEY}
						secret_key "{env.S3_SECRET_KEY}"
					}
				}
			}`,
			want: Handler{Upstream: "docker.io", Cache: &CacheConfig{Dir: "/var/cache/docker", MaxSize: 50 << 30, S3: &S3Config{
				Endpoint: "https://s3.eu-west-1.amazonaws.com", Bucket: "docker-cache", Region: "eu-west-1",
				Prefix: "docker_proxy/", AccessKey: "{env.S3_ACCESS_KEY}", SecretKey: "{env.S3_SECRET_KEY}",
			}}},
		},
		{
			name: "shared tier from placeholders only",
			input: `docker_proxy docker.io {
				cache {
					s3 {
						secret_key {env.S3_SECRET_KEY}
						access_key {env.S3_ACCESS_KEY}
						bucket {env.S3_BUCKET}
						endpoint {env.S3_ENDPOINT}
					}
				}
			}`,
			want: Handler{Upstream: "docker.io", Cache: &CacheConfig{S3: &S3Config{
				Endpoint: "{env.S3_ENDPOINT}", Bucket: "{env.S3_BUCKET}", AccessKey: "{env.S3_ACCESS_KEY}", SecretKey: "{env.S3_SECRET_KEY}",
			}}},
		},
		{
			name: "transport without block",
			input: `docker_proxy docker.io {
				transport http
			}`,
			want: Handler{Upstream: "docker.io", TransportRaw: json.RawMessage(`{"protocol":"http"}`)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Handler
			if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input)); err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			assertHandler(t, got, tt.want)
		})
	}
}

// TestUnmarshalCaddyfileOverrideAfterUse checks that an upstream override
// may follow the routes that use its name.
func TestUnmarshalCaddyfileOverrideAfterUse(t *testing.T) {
	input := `docker_proxy {
		route Hub.Example.com docker.io
		route 10.1.2.3 http://10.1.2.4:5000
		route ::1 ghcr.io
		credentials docker.io user pass
		upstream docker.io http://127.0.0.1:5001
	}`
	want := Handler{
		Routes: map[string]string{
			"hub.example.com": "docker.io",
			"10.1.2.3":        "http://10.1.2.4:5000",
			"::1":             "ghcr.io",
		},
		Credentials: []Credential{{Upstream: "docker.io", Username: "user", Secret: "pass"}},
		Upstreams:   map[string]string{"docker.io": "http://127.0.0.1:5001"},
	}
	var got Handler
	if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
	assertHandler(t, got, want)
	up, err := registry.ParseUpstream(got.Routes["hub.example.com"], got.Upstreams)
	if err != nil || up.Name != registry.DockerHub || up.URL.String() != "http://127.0.0.1:5001" {
		t.Errorf("route upstream resolves to %v, %v; want docker.io at http://127.0.0.1:5001", up, err)
	}
}

func assertHandler(t *testing.T, got, want Handler) {
	t.Helper()
	gotTransport, wantTransport := got.TransportRaw, want.TransportRaw
	got.TransportRaw, want.TransportRaw = nil, nil
	if !reflect.DeepEqual(got, want) {
		gotJSON, _ := json.Marshal(got)
		wantJSON, _ := json.Marshal(want)
		t.Errorf("parsed handler:\n got %s\nwant %s", gotJSON, wantJSON)
	}
	switch {
	case gotTransport == nil && wantTransport == nil:
	case gotTransport == nil || wantTransport == nil || !jsonEqual(t, gotTransport, wantTransport):
		t.Errorf("transport:\n got %s\nwant %s", gotTransport, wantTransport)
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string
		line  int      // line of the offending token
		want  []string // substrings of the error
	}{
		// the directive and its argument
		{"no upstream at all", `docker_proxy`, 1, []string{"needs an upstream"}},
		{"no upstream, empty block", "docker_proxy {\n}", 1, []string{"needs an upstream"}},
		{"no upstream, only credentials", "docker_proxy {\n\tcredentials docker.io u p\n}", 1, []string{"needs an upstream"}},
		{"two upstream arguments", `docker_proxy docker.io ghcr.io`, 1, []string{"wrong argument count", "'ghcr.io'"}},
		{"unknown upstream name", `docker_proxy dockerhub`, 1, []string{`unknown upstream "dockerhub"`}},
		{"upstream URL scheme", `docker_proxy ftp://registry.example.com`, 1, []string{"ftp://registry.example.com", "scheme"}},
		{"upstream URL with path", `docker_proxy https://registry.example.com/v2/`, 1, []string{"https://registry.example.com/v2/", "only scheme and host"}},
		{"upstream URL with user info", `docker_proxy https://u:p@registry.example.com`, 1, []string{"credentials subdirective"}},
		{"upstream URL without host", `docker_proxy http://`, 1, []string{"http://", "no host"}},
		{"unknown subdirective", "docker_proxy docker.io {\n\tcache_dir /tmp\n}", 2, []string{"unknown subdirective 'cache_dir'"}},
		{"unexpected block", "docker_proxy docker.io {\n\tauth_key k {\n\t\tfoo\n\t}\n}", 2, []string{"unexpected block"}},

		// domain
		{"domain without value", "docker_proxy {\n\tdomain\n}", 2, []string{"wrong argument count", "'domain'"}},
		{"domain with two values", "docker_proxy {\n\tdomain example.com example.org\n}", 2, []string{"wrong argument count", "'example.org'"}},
		{"domain repeated", "docker_proxy {\n\tdomain example.com\n\tdomain example.org\n}", 3, []string{"domain already specified"}},
		{"domain with scheme", "docker_proxy {\n\tdomain https://example.com\n}", 2, []string{"invalid domain 'https://example.com'"}},
		{"domain with port", "docker_proxy {\n\tdomain example.com:443\n}", 2, []string{"invalid domain 'example.com:443'"}},
		{"domain wildcard", "docker_proxy {\n\tdomain *.example.com\n}", 2, []string{"invalid domain '*.example.com'"}},
		{"domain underscore", "docker_proxy {\n\tdomain exa_mple.com\n}", 2, []string{"invalid domain 'exa_mple.com'"}},
		{"domain empty label", "docker_proxy {\n\tdomain example..com\n}", 2, []string{"invalid domain 'example..com'"}},
		{"domain trailing dot", "docker_proxy {\n\tdomain example.com.\n}", 2, []string{"invalid domain 'example.com.'"}},
		{"domain leading hyphen", "docker_proxy {\n\tdomain -example.com\n}", 2, []string{"invalid domain '-example.com'"}},
		{"domain IP address", "docker_proxy {\n\tdomain 10.0.0.1\n}", 2, []string{"invalid domain '10.0.0.1'"}},
		{"domain empty", "docker_proxy {\n\tdomain \"\"\n}", 2, []string{"invalid domain ''"}},
		{"domain label too long", "docker_proxy {\n\tdomain " + strings.Repeat("a", 64) + ".com\n}", 2, []string{"invalid domain"}},

		// route
		{"route without upstream", "docker_proxy {\n\troute hub.example.com\n}", 2, []string{"wrong argument count", "'hub.example.com'"}},
		{"route without arguments", "docker_proxy {\n\troute\n}", 2, []string{"wrong argument count", "'route'"}},
		{"route with three arguments", "docker_proxy {\n\troute a.example.com docker.io ghcr.io\n}", 2, []string{"wrong argument count", "'ghcr.io'"}},
		{"route host with port", "docker_proxy {\n\troute hub.example.com:5000 docker.io\n}", 2, []string{"invalid route host 'hub.example.com:5000'"}},
		{"route host URL", "docker_proxy {\n\troute https://hub.example.com docker.io\n}", 2, []string{"invalid route host 'https://hub.example.com'"}},
		{"route host repeated", "docker_proxy {\n\troute hub.example.com docker.io\n\troute Hub.Example.com ghcr.io\n}", 3, []string{"duplicate route for host 'Hub.Example.com'"}},
		{"route bad upstream", "docker_proxy {\n\troute hub.example.com dockerhub\n}", 2, []string{`unknown upstream "dockerhub"`}},
		{"route bad upstream URL", "docker_proxy {\n\troute hub.example.com http://h/x\n}", 2, []string{`"http://h/x"`}},

		// upstream
		{"upstream without URL", "docker_proxy docker.io {\n\tupstream docker.io\n}", 2, []string{"wrong argument count", "'docker.io'"}},
		{"upstream with three arguments", "docker_proxy docker.io {\n\tupstream docker.io http://a http://b\n}", 2, []string{"wrong argument count", "'http://b'"}},
		{"upstream name not well-known", "docker_proxy docker.io {\n\tupstream registry.example.com http://127.0.0.1:5000\n}", 2, []string{"upstream 'registry.example.com' is not a well-known registry name", "ghcr.io"}},
		{"upstream name is a URL", "docker_proxy docker.io {\n\tupstream https://ghcr.io http://127.0.0.1:5000\n}", 2, []string{"upstream 'https://ghcr.io' is not a well-known"}},
		{"upstream bad URL", "docker_proxy docker.io {\n\tupstream docker.io ftp://mirror\n}", 2, []string{"ftp://mirror", "scheme"}},
		{"upstream URL is a name", "docker_proxy docker.io {\n\tupstream docker.io ghcr.io\n}", 2, []string{`"ghcr.io"`}},
		{"upstream repeated", "docker_proxy docker.io {\n\tupstream docker.io http://a\n\tupstream docker.io http://b\n}", 3, []string{"upstream 'docker.io' already specified"}},
		{"upstream repeated through an alias", "docker_proxy docker.io {\n\tupstream docker.io http://a\n\tupstream index.docker.io http://b\n}", 3, []string{"upstream 'index.docker.io' already specified"}},

		// fallback
		{"fallback without value", "docker_proxy {\n\tfallback\n}", 2, []string{"wrong argument count", "'fallback'"}},
		{"fallback with two values", "docker_proxy {\n\tfallback docker.io ghcr.io\n}", 2, []string{"wrong argument count", "'ghcr.io'"}},
		{"fallback repeated", "docker_proxy {\n\tfallback docker.io\n\tfallback ghcr.io\n}", 3, []string{"fallback already specified"}},
		{"fallback bad", "docker_proxy {\n\tfallback hub\n}", 2, []string{`unknown upstream "hub"`}},

		// credentials
		{"credentials without arguments", "docker_proxy docker.io {\n\tcredentials\n}", 2, []string{"wrong argument count", "'credentials'"}},
		{"credentials with one argument", "docker_proxy docker.io {\n\tcredentials user\n}", 2, []string{"wrong argument count", "'user'"}},
		{"credentials with four arguments", "docker_proxy docker.io {\n\tcredentials docker.io user pass extra\n}", 2, []string{"wrong argument count", "'extra'"}},
		{"credentials without default upstream", "docker_proxy {\n\tdomain example.com\n\tcredentials user pass\n}", 3, []string{"default upstream, but there is none"}},
		{"credentials bad upstream", "docker_proxy docker.io {\n\tcredentials hub user pass\n}", 2, []string{`unknown upstream "hub"`}},
		{"credentials empty username", "docker_proxy docker.io {\n\tcredentials \"\" pass\n}", 2, []string{"non-empty username and secret"}},
		{"credentials empty secret", "docker_proxy docker.io {\n\tcredentials ghcr.io user \"\"\n}", 2, []string{"non-empty username and secret"}},
		{"credentials repeated for default upstream", "docker_proxy docker.io {\n\tcredentials a b\n\tcredentials c d\n}", 3, []string{"credentials for upstream 'docker.io' already specified"}},
		{"credentials repeated, default then by name", "docker_proxy docker.io {\n\tcredentials a b\n\tcredentials registry-1.docker.io c d\n}", 3, []string{"credentials for upstream 'docker.io' already specified"}},
		{"credentials repeated by name", "docker_proxy docker.io {\n\tcredentials ghcr.io a b\n\tcredentials GHCR.io c d\n}", 3, []string{"credentials for upstream 'ghcr.io' already specified"}},

		// auth_key
		{"auth_key without value", "docker_proxy docker.io {\n\tauth_key\n}", 2, []string{"wrong argument count", "'auth_key'"}},
		{"auth_key with two values", "docker_proxy docker.io {\n\tauth_key a b\n}", 2, []string{"wrong argument count", "'b'"}},
		{"auth_key empty", "docker_proxy docker.io {\n\tauth_key \"\"\n}", 2, []string{"auth_key must not be empty"}},
		{"auth_key repeated", "docker_proxy docker.io {\n\tauth_key a\n\tauth_key b\n}", 3, []string{"auth_key already specified"}},

		// page
		{"page without value", "docker_proxy docker.io {\n\tpage\n}", 2, []string{"wrong argument count", "'page'"}},
		{"page with two values", "docker_proxy docker.io {\n\tpage off on\n}", 2, []string{"wrong argument count", "'on'"}},
		{"page repeated", "docker_proxy docker.io {\n\tpage off\n\tpage /etc/page.html\n}", 3, []string{"page already specified"}},
		{"page empty", "docker_proxy docker.io {\n\tpage \"\"\n}", 2, []string{"template file name must not be empty"}},
		{"page with a block", "docker_proxy docker.io {\n\tpage off {\n\t\tfoo\n\t}\n}", 2, []string{"unexpected block"}},

		// cache
		{"cache repeated", "docker_proxy docker.io {\n\tcache off\n\tcache /tmp/c\n}", 3, []string{"cache already specified"}},
		{"cache two arguments", "docker_proxy docker.io {\n\tcache /tmp/c /tmp/d\n}", 2, []string{"wrong argument count", "'/tmp/d'"}},
		{"cache off with block", "docker_proxy docker.io {\n\tcache off {\n\t\tmax_size 1GB\n\t}\n}", 2, []string{"cache off takes no block"}},
		{"cache off with empty block", "docker_proxy docker.io {\n\tcache off {\n\t}\n}", 2, []string{"cache off takes no block"}},
		{"cache off with empty block on one line", "docker_proxy docker.io {\n\tcache off { }\n}", 2, []string{"cache off takes no block"}},
		{"cache off with a {} argument", "docker_proxy docker.io {\n\tcache off {}\n}", 2, []string{"wrong argument count", "'{}'"}},
		{"cache empty directory", "docker_proxy docker.io {\n\tcache \"\"\n}", 2, []string{"cache directory must not be empty"}},
		{"cache unknown subdirective", "docker_proxy docker.io {\n\tcache {\n\t\tmax_age 1h\n\t}\n}", 3, []string{"unknown cache subdirective 'max_age'"}},
		{"cache unexpected block", "docker_proxy docker.io {\n\tcache {\n\t\tmax_size 1GB {\n\t\t}\n\t}\n}", 3, []string{"unexpected block"}},
		{"max_size without value", "docker_proxy docker.io {\n\tcache {\n\t\tmax_size\n\t}\n}", 3, []string{"wrong argument count", "'max_size'"}},
		{"max_size with two values", "docker_proxy docker.io {\n\tcache {\n\t\tmax_size 1 GB\n\t}\n}", 3, []string{"wrong argument count", "'GB'"}},
		{"max_size repeated", "docker_proxy docker.io {\n\tcache {\n\t\tmax_size 1GB\n\t\tmax_size 2GB\n\t}\n}", 4, []string{"max_size already specified"}},
		{"max_size bad", "docker_proxy docker.io {\n\tcache {\n\t\tmax_size 50parsecs\n\t}\n}", 3, []string{"invalid max_size '50parsecs'"}},
		{"max_size negative", "docker_proxy docker.io {\n\tcache {\n\t\tmax_size -1GB\n\t}\n}", 3, []string{"invalid max_size '-1GB'"}},
		{"max_size too large", "docker_proxy docker.io {\n\tcache {\n\t\tmax_size 18446744073709551615\n\t}\n}", 3, []string{"invalid max_size '18446744073709551615'", "too large"}},
		{"tag_ttl without value", "docker_proxy docker.io {\n\tcache {\n\t\ttag_ttl\n\t}\n}", 3, []string{"wrong argument count", "'tag_ttl'"}},
		{"tag_ttl with two values", "docker_proxy docker.io {\n\tcache {\n\t\ttag_ttl 5 m\n\t}\n}", 3, []string{"wrong argument count", "'m'"}},
		{"tag_ttl repeated", "docker_proxy docker.io {\n\tcache {\n\t\ttag_ttl 5m\n\t\ttag_ttl 1h\n\t}\n}", 4, []string{"tag_ttl already specified"}},
		{"tag_ttl bad", "docker_proxy docker.io {\n\tcache {\n\t\ttag_ttl soon\n\t}\n}", 3, []string{"invalid tag_ttl 'soon'"}},
		{"tag_ttl negative", "docker_proxy docker.io {\n\tcache {\n\t\ttag_ttl -5m\n\t}\n}", 3, []string{"invalid tag_ttl '-5m'", "must be positive"}},
		{"negative_ttl without value", "docker_proxy docker.io {\n\tcache {\n\t\tnegative_ttl\n\t}\n}", 3, []string{"wrong argument count", "'negative_ttl'"}},
		{"negative_ttl repeated", "docker_proxy docker.io {\n\tcache {\n\t\tnegative_ttl 5s\n\t\tnegative_ttl 1m\n\t}\n}", 4, []string{"negative_ttl already specified"}},
		{"negative_ttl bad", "docker_proxy docker.io {\n\tcache {\n\t\tnegative_ttl never\n\t}\n}", 3, []string{"invalid negative_ttl 'never'"}},
		{"negative_ttl negative", "docker_proxy docker.io {\n\tcache {\n\t\tnegative_ttl -5s\n\t}\n}", 3, []string{"invalid negative_ttl '-5s'", "must not be negative"}},
		{"tag_ttl zero", "docker_proxy docker.io {\n\tcache {\n\t\ttag_ttl 0s\n\t}\n}", 3, []string{"invalid tag_ttl '0s'", "must be positive"}},

		// cache s3
		{"s3 repeated", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tendpoint http://127.0.0.1:9000\n\t\t\tbucket cache\n\t\t\taccess_key id\n\t\t\tsecret_key pw\n\t\t}\n\t\ts3 {\n\t\t}\n\t}\n}", 9, []string{"s3 already specified"}},
		{"s3 with an argument", "docker_proxy docker.io {\n\tcache {\n\t\ts3 minio {\n\t\t}\n\t}\n}", 3, []string{"wrong argument count", "'minio'"}},
		{"s3 without block", "docker_proxy docker.io {\n\tcache {\n\t\ts3\n\t}\n}", 3, []string{"s3: endpoint is required"}},
		{"s3 without endpoint", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tbucket cache\n\t\t\taccess_key id\n\t\t\tsecret_key pw\n\t\t}\n\t}\n}", 3, []string{"s3: endpoint is required"}},
		{"s3 without bucket", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tendpoint https://s3.example.com\n\t\t\taccess_key \"{env.ID}\"\n\t\t\tsecret_key {env.KEY}\n\t\t}\n\t}\n}", 3, []string{"s3: bucket is required"}},
		{"s3 without secret_key", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tendpoint https://s3.example.com\n\t\t\tbucket cache\n\t\t\taccess_key id\n\t\t}\n\t}\n}", 3, []string{"give both access_key and secret_key, or neither"}},
		{"s3 unknown subdirective", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tsecret pw\n\t\t}\n\t}\n}", 4, []string{"unknown s3 subdirective 'secret'"}},
		{"s3 subdirective repeated", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tbucket cache-a\n\t\t\tbucket cache-b\n\t\t}\n\t}\n}", 5, []string{"bucket already specified"}},
		{"s3 subdirective without value", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tregion\n\t\t}\n\t}\n}", 4, []string{"wrong argument count", "'region'"}},
		{"s3 subdirective with two values", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tprefix a b\n\t\t}\n\t}\n}", 4, []string{"wrong argument count", "'b'"}},
		{"s3 empty value", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tregion \"\"\n\t\t}\n\t}\n}", 4, []string{"region must not be empty"}},
		{"s3 unexpected block", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tbucket cache {\n\t\t\t}\n\t\t}\n\t}\n}", 4, []string{"unexpected block"}},
		{"s3 endpoint scheme", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tendpoint s3.example.com\n\t\t}\n\t}\n}", 4, []string{"invalid endpoint 's3.example.com'", "http:// or https://"}},
		{"s3 endpoint with a path", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tendpoint https://s3.example.com/cache\n\t\t}\n\t}\n}", 4, []string{"only scheme and host"}},
		{"s3 endpoint with a password", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tendpoint https://id:hunter2@s3.example.com\n\t\t}\n\t}\n}", 4, []string{"access_key and secret_key"}},
		{"s3 bad bucket", "docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tbucket Docker_Cache\n\t\t}\n\t}\n}", 4, []string{"invalid bucket 'Docker_Cache'"}},
		{"s3 in cache off", "docker_proxy docker.io {\n\tcache off {\n\t\ts3 {\n\t\t}\n\t}\n}", 2, []string{"cache off takes no block"}},

		// transport
		{"transport without module", "docker_proxy docker.io {\n\ttransport\n}", 2, []string{"wrong argument count", "'transport'"}},
		{"transport unknown module", "docker_proxy docker.io {\n\ttransport carrier_pigeon\n}", 2, []string{"http.reverse_proxy.transport.carrier_pigeon"}},
		{"transport bad option", "docker_proxy docker.io {\n\ttransport http {\n\t\tdial_timeout soon\n\t}\n}", 3, []string{"soon"}},
		{"transport repeated", "docker_proxy docker.io {\n\ttransport http\n\ttransport http {\n\t\tdial_timeout 1s\n\t}\n}", 3, []string{"transport already specified"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := caddyfileError(t, tt.input, tt.line, tt.want...)
			if strings.Contains(msg, "hunter2") {
				t.Errorf("error %q shows a password", msg)
			}
		})
	}
}

// caddyfileError parses input, which must fail with an error that names
// the Caddyfile line and mentions every one of want; it returns the error
// message.
func caddyfileError(t *testing.T, input string, line int, want ...string) string {
	t.Helper()
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	if err == nil {
		t.Fatalf("no error; parsed %+v", h)
	}
	msg := err.Error()
	if at := "Testfile:" + strconv.Itoa(line); !strings.HasSuffix(msg, ", at "+at) {
		t.Errorf("error %q does not end with the position %s", msg, at)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not mention %q", msg, w)
		}
	}
	return msg
}

// FuzzUnmarshalCaddyfile feeds arbitrary Caddyfile text to the parser: it
// must never panic, and whatever it accepts must be a usable config.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	seeds := []string{
		"docker_proxy docker.io",
		"docker_proxy {\n\tdomain example.com\n}",
		"docker_proxy docker.io {\n\troute a.example.com ghcr.io\n\tupstream docker.io http://127.0.0.1:5000\n\tfallback quay.io\n}",
		"docker_proxy docker.io {\n\tcredentials u {env.T}\n\tcredentials ghcr.io u p\n\tauth_key k\n}",
		"docker_proxy docker.io {\n\tcache /c {\n\t\tmax_size 1GiB\n\t\ttag_ttl 5m\n\t}\n}",
		"docker_proxy docker.io {\n\tcache {\n\t\tnegative_ttl 5s\n\t}\n}",
		"docker_proxy docker.io {\n\tcache off {}\n}",
		"docker_proxy docker.io {\n\tcache {\n\t\ts3 {\n\t\t\tendpoint http://127.0.0.1:9000\n\t\t\tbucket cache\n\t\t\taccess_key id\n\t\t\tsecret_key {env.K}\n\t\t}\n\t}\n}",
		"docker_proxy docker.io {\n\ttransport http {\n\t\tdial_timeout 5s\n\t\tversions 1.1 2\n\t}\n}",
		"docker_proxy {\n\tcache {\n\t\t{\n}\n}",
		"docker_proxy docker.io {\n\tdomain {\n\t}\n}}",
		"docker_proxy \"\" {\n\tcredentials \"\" \"\" \"\"\n}",
		"# only a comment",
		"",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		// NewTestDispenser substitutes {$ENV} variables and exits the
		// process on input the lexer rejects; keep to what it accepts.
		if strings.Contains(input, "{$") {
			return
		}
		tokens, err := caddyfile.Tokenize([]byte(input), "Testfile")
		if err != nil {
			return
		}
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
			// Without tokens there is no position to report.
			if len(tokens) > 0 && !strings.Contains(err.Error(), "Testfile:") {
				t.Errorf("error without position: %v", err)
			}
			return
		}
		if h.Upstream == "" && h.Domain == "" && len(h.Routes) == 0 && h.Fallback == "" {
			t.Errorf("accepted a config without any upstream: %+v", h)
		}
		upstreams := []string{h.Upstream, h.Fallback}
		for _, u := range h.Routes {
			upstreams = append(upstreams, u)
		}
		for _, c := range h.Credentials {
			upstreams = append(upstreams, c.Upstream)
		}
		for _, u := range upstreams {
			if u == "" {
				continue
			}
			if _, err := registry.ParseUpstream(u, h.Upstreams); err != nil {
				t.Errorf("accepted an invalid upstream %q: %v", u, err)
			}
		}
		if err := h.Validate(); err != nil {
			t.Errorf("accepted a config that Validate refuses: %v", err)
		}
		if h.TransportRaw != nil && !json.Valid(h.TransportRaw) {
			t.Errorf("transport is not JSON: %s", h.TransportRaw)
		}
		if _, err := json.Marshal(h); err != nil {
			t.Errorf("config does not encode: %v", err)
		}
	})
}

// TestCaddyfileExampleAdaptsAndValidates: the Caddyfile users copy adapts
// without warnings and passes Caddy's validation (every module
// provisioned), with no environment and with DOCKER_PROXY_DOMAIN set, and
// serves the host table it documents.
func TestCaddyfileExampleAdaptsAndValidates(t *testing.T) {
	src, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, domain := range []string{"", "example.com"} {
		t.Run("DOCKER_PROXY_DOMAIN="+domain, func(t *testing.T) {
			dir := t.TempDir()
			t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
			t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
			for _, v := range []string{"DOCKER_PROXY_DOMAIN", "DOCKER_PROXY_HTTP_PORT", "DOCKER_PROXY_HTTPS_PORT",
				"DOCKER_PROXY_CACHE_SIZE", "DOCKERHUB_USER", "DOCKERHUB_TOKEN"} {
				t.Setenv(v, "") // restored after the test...
				os.Unsetenv(v)  // ...and unset during it
			}
			want := "localhost"
			if domain != "" {
				t.Setenv("DOCKER_PROXY_DOMAIN", domain)
				want = domain
			}

			adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "Caddyfile.example"})
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			for _, w := range warnings {
				t.Errorf("warning: %s:%d: %s", w.File, w.Line, w.Message)
			}
			var cfg map[string]any
			if err := json.Unmarshal(adapted, &cfg); err != nil {
				t.Fatal(err)
			}
			handlers := findHandlers(cfg, "docker_proxy")
			if len(handlers) != 1 {
				t.Fatalf("%d docker_proxy handlers, want 1:\n%s", len(handlers), adapted)
			}
			h := handlers[0]
			if h["domain"] != want {
				t.Errorf("domain %v, want %s", h["domain"], want)
			}
			if routes, _ := h["routes"].(map[string]any); routes["localhost"] != "docker.io" {
				t.Errorf("routes %v, want localhost to docker.io", h["routes"])
			}
			cache, _ := h["cache"].(map[string]any)
			if cache["max_size"] != float64(20<<30) || cache["tag_ttl"] != float64(5*time.Minute) {
				t.Errorf("cache %v, want max_size 20GiB and tag_ttl 5m", cache)
			}
			hosts := map[string]bool{}
			collectHosts(cfg, hosts)
			for _, prefix := range []string{"docker", "docker-staging", "quay", "gcr", "k8s-gcr", "k8s", "ghcr", "cloudsmith", "ecr"} {
				if !hosts[prefix+"."+want] {
					t.Errorf("no site for %s.%s; sites: %v", prefix, want, hosts)
				}
			}
			if !hosts["localhost"] {
				t.Errorf("no site for localhost; sites: %v", hosts)
			}
			if !strings.Contains(string(adapted), `"http_port":80`) || !strings.Contains(string(adapted), `"https_port":443`) {
				t.Errorf("default ports missing:\n%s", adapted)
			}

			var c caddy.Config
			if err := json.Unmarshal(adapted, &c); err != nil {
				t.Fatal(err)
			}
			if err := caddy.Validate(&c); err != nil {
				t.Errorf("validate: %v", err)
			}
		})
	}
}

// collectHosts adds the names of every host matcher in v to hosts.
func collectHosts(v any, hosts map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		if list, ok := v["host"].([]any); ok {
			for _, h := range list {
				if s, ok := h.(string); ok {
					hosts[s] = true
				}
			}
		}
		for _, child := range v {
			collectHosts(child, hosts)
		}
	case []any:
		for _, child := range v {
			collectHosts(child, hosts)
		}
	}
}
