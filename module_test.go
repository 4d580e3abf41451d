package dockerproxy

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// validateJSON runs a config with one docker_proxy handler through Caddy's
// own validation (load, provision, validate; nothing listens), as `caddy
// validate` and a config pushed to the admin API do.
func validateJSON(t *testing.T, handler map[string]any) error {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	handler["handler"] = "docker_proxy"
	if _, ok := handler["cache"]; !ok {
		handler["cache"] = map[string]any{"dir": filepath.Join(dir, "cache")}
	}
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"srv0": map[string]any{
			"listen": []string{"127.0.0.1:0"},
			"routes": []any{map[string]any{"handle": []any{handler}}},
		}}}},
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var c caddy.Config
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&c)
}

func TestCredentialsEmptyAfterExpansionFailProvision(t *testing.T) {
	t.Setenv("DOCKER_PROXY_TEST_USER", "robot")
	t.Setenv("DOCKER_PROXY_TEST_SECRET", "robot-secret-value")
	t.Setenv("DOCKER_PROXY_TEST_EMPTY", "")
	creds := func(upstream, user, secret string) map[string]any {
		return map[string]any{
			"upstream":    "docker.io",
			"upstreams":   map[string]string{"ghcr.io": "http://127.0.0.1:5000"},
			"credentials": []any{map[string]string{"upstream": upstream, "username": user, "secret": secret}},
		}
	}
	if err := validateJSON(t, creds("", "{env.DOCKER_PROXY_TEST_USER}", "{env.DOCKER_PROXY_TEST_SECRET}")); err != nil {
		t.Fatalf("credentials from set variables: %v", err)
	}
	for _, c := range []struct {
		name                     string
		upstream, user, secret   string
		wantUpstream, wantReason string
	}{
		{"unset secret", "", "{env.DOCKER_PROXY_TEST_USER}", "{env.DOCKER_PROXY_TEST_UNSET}", "docker.io", "secret is empty"},
		{"empty secret", "ghcr.io", "robot", "{env.DOCKER_PROXY_TEST_EMPTY}", "ghcr.io", "secret is empty"},
		{"unset username", "ghcr.io", "{env.DOCKER_PROXY_TEST_UNSET}", "{env.DOCKER_PROXY_TEST_SECRET}", "ghcr.io", "username is empty"},
	} {
		err := validateJSON(t, creds(c.upstream, c.user, c.secret))
		if err == nil {
			t.Errorf("%s: provisioned", c.name)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "credentials for upstream "+c.wantUpstream) || !strings.Contains(msg, c.wantReason) {
			t.Errorf("%s: error %q does not name upstream %s and why", c.name, msg, c.wantUpstream)
		}
		if strings.Contains(msg, "robot-secret-value") {
			t.Errorf("%s: the error shows the secret: %q", c.name, msg)
		}
	}
}

func TestValidateGivesJSONTheCaddyfileChecks(t *testing.T) {
	tests := []struct {
		name string
		h    Handler
		want string
	}{
		{"no upstream at all", Handler{}, "no upstream"},
		{"bad upstream URL", Handler{Upstream: "https://registry.example.com/v2/"}, "only scheme and host"},
		{"unknown upstream name", Handler{Upstream: "dockerhub"}, `unknown upstream "dockerhub"`},
		{"upstream URL with user info", Handler{Upstream: "https://u:p@registry.example.com"}, "credentials subdirective"},
		{"domain with port", Handler{Domain: "example.com:443"}, "invalid domain 'example.com:443'"},
		{"domain with underscore", Handler{Domain: "exa_mple.com"}, "invalid domain 'exa_mple.com'"},
		{"domain IP address", Handler{Domain: "10.0.0.1"}, "invalid domain '10.0.0.1'"},
		{"route host with port", Handler{Routes: map[string]string{"hub.example.com:5000": "docker.io"}}, "invalid route host 'hub.example.com:5000'"},
		{"route host URL", Handler{Routes: map[string]string{"https://hub.example.com": "docker.io"}}, "invalid route host"},
		{"route host twice, by case", Handler{Routes: map[string]string{"hub.example.com": "docker.io", "Hub.Example.com": "ghcr.io"}}, "duplicate route for host"},
		{"route bad upstream", Handler{Routes: map[string]string{"hub.example.com": "http://h/x"}}, `"http://h/x"`},
		{"override of an unknown name", Handler{Upstream: "docker.io", Upstreams: map[string]string{"myregistry": "http://127.0.0.1:5000"}}, "'myregistry' is not a well-known registry name"},
		{"override bad URL", Handler{Upstream: "docker.io", Upstreams: map[string]string{"docker.io": "ftp://mirror"}}, "scheme"},
		{"override twice, by alias", Handler{Upstream: "docker.io", Upstreams: map[string]string{"docker.io": "http://a", "index.docker.io": "http://b"}}, "already specified"},
		{"fallback bad", Handler{Fallback: "hub"}, `unknown upstream "hub"`},
		{"credentials without default upstream", Handler{Domain: "example.com", Credentials: []Credential{{Username: "u", Secret: "s"}}}, "default upstream, but there is none"},
		{"credentials bad upstream", Handler{Upstream: "docker.io", Credentials: []Credential{{Upstream: "hub", Username: "u", Secret: "s"}}}, `unknown upstream "hub"`},
		{"credentials empty username", Handler{Upstream: "docker.io", Credentials: []Credential{{Secret: "s"}}}, "non-empty username and secret"},
		{"credentials empty secret", Handler{Upstream: "docker.io", Credentials: []Credential{{Upstream: "ghcr.io", Username: "u"}}}, "non-empty username and secret"},
		{"credentials twice for one upstream", Handler{Upstream: "docker.io", Credentials: []Credential{
			{Username: "a", Secret: "b"}, {Upstream: "registry-1.docker.io", Username: "c", Secret: "d"}}}, "credentials for upstream 'docker.io' already specified"},
		{"negative max_size", Handler{Upstream: "docker.io", Cache: &CacheConfig{MaxSize: -1}}, "max_size"},
		{"negative tag_ttl", Handler{Upstream: "docker.io", Cache: &CacheConfig{TagTTL: caddy.Duration(-time.Minute)}}, "tag_ttl"},
		{"negative negative_ttl", Handler{Upstream: "docker.io", Cache: &CacheConfig{NegativeTTL: caddy.Duration(-time.Second)}}, "negative_ttl"},
		{"s3 without endpoint", Handler{Upstream: "docker.io", Cache: &CacheConfig{S3: &S3Config{Bucket: "cache", AccessKey: "id", SecretKey: "pw"}}}, "s3: endpoint is required"},
		{"s3 without bucket", Handler{Upstream: "docker.io", Cache: &CacheConfig{S3: &S3Config{Endpoint: "https://s3.example.com", AccessKey: "id", SecretKey: "pw"}}}, "s3: bucket is required"},
		{"s3 without secret_key", Handler{Upstream: "docker.io", Cache: &CacheConfig{S3: &S3Config{Endpoint: "https://s3.example.com", Bucket: "cache", AccessKey: "id"}}}, "give both access_key and secret_key, or neither"},
		{"s3 endpoint without scheme", Handler{Upstream: "docker.io", Cache: &CacheConfig{S3: &S3Config{Endpoint: "s3.example.com", Bucket: "cache", AccessKey: "id", SecretKey: "pw"}}}, "http:// or https://"},
		{"s3 bad bucket", Handler{Upstream: "docker.io", Cache: &CacheConfig{S3: &S3Config{Endpoint: "https://s3.example.com", Bucket: "a", AccessKey: "id", SecretKey: "pw"}}}, "invalid bucket 'a'"},
		{"s3 with the cache off", Handler{Upstream: "docker.io", Cache: &CacheConfig{Disabled: true, S3: &S3Config{Endpoint: "https://s3.example.com", Bucket: "cache", AccessKey: "id", SecretKey: "pw"}}}, "disabled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.h.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error with %q", err, tt.want)
			}
		})
	}

	for _, h := range []Handler{
		{Upstream: "docker.io"},
		{Domain: "Example.COM", Routes: map[string]string{"Hub.Example.com": "docker.io", "10.0.0.1": "ghcr.io"}},
		{Upstream: "index.docker.io", Upstreams: map[string]string{"docker.io": "http://127.0.0.1:5000"}, Fallback: "quay.io",
			Credentials: []Credential{{Username: "u", Secret: "{env.T}"}, {Upstream: "ghcr.io", Username: "u", Secret: "s"}},
			Cache:       &CacheConfig{MaxSize: 1 << 30, TagTTL: caddy.Duration(time.Minute)}},
		{Upstream: "docker.io", Cache: &CacheConfig{S3: &S3Config{Endpoint: "{env.S3_ENDPOINT}", Bucket: "{env.S3_BUCKET}", AccessKey: "{env.ID}", SecretKey: "{env.KEY}"}}},
	} {
		if err := h.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v", h, err)
		}
	}

	// Caddy runs it: a JSON config that provisions fine is refused.
	err := validateJSON(t, map[string]any{
		"upstream": "docker.io",
		"credentials": []any{
			map[string]string{"username": "a", "secret": "b"},
			map[string]string{"upstream": "docker.io", "username": "c", "secret": "d"},
		},
	})
	if err == nil || !strings.Contains(err.Error(), "already specified") {
		t.Errorf("caddy.Validate of repeated credentials = %v", err)
	}
}

// TestSharedTierProvision: an s3 config provisions with its placeholders
// expanded, and one that expands to nothing (an unset variable) fails
// provisioning with an error that names the field and shows no secret.
func TestSharedTierProvision(t *testing.T) {
	t.Setenv("DOCKER_PROXY_TEST_S3_ENDPOINT", "http://127.0.0.1:9")
	t.Setenv("DOCKER_PROXY_TEST_S3_ID", "robot")
	t.Setenv("DOCKER_PROXY_TEST_S3_KEY", "s3-secret-value")
	withS3 := func(endpoint, secret string) map[string]any {
		return map[string]any{"upstream": "docker.io", "cache": map[string]any{
			"dir": filepath.Join(t.TempDir(), "cache"),
			"s3":  map[string]string{"endpoint": endpoint, "bucket": "cache", "access_key": "{env.DOCKER_PROXY_TEST_S3_ID}", "secret_key": secret},
		}}
	}
	// Provisioning asks the bucket nothing: a server that is down shows
	// in the log when the cache first uses it.
	if err := validateJSON(t, withS3("{env.DOCKER_PROXY_TEST_S3_ENDPOINT}", "{env.DOCKER_PROXY_TEST_S3_KEY}")); err != nil {
		t.Fatalf("s3 from set variables: %v", err)
	}
	for _, c := range []struct{ endpoint, secret, want string }{
		{"{env.DOCKER_PROXY_TEST_S3_ENDPOINT}", "{env.DOCKER_PROXY_TEST_S3_UNSET}", "secret_key is empty"},
		{"{env.DOCKER_PROXY_TEST_S3_UNSET}", "{env.DOCKER_PROXY_TEST_S3_KEY}", "endpoint is empty"},
		{"{env.DOCKER_PROXY_TEST_S3_ID}", "{env.DOCKER_PROXY_TEST_S3_KEY}", "invalid endpoint 'robot'"},
	} {
		err := validateJSON(t, withS3(c.endpoint, c.secret))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("endpoint %s, secret %s: %v, want an error with %q", c.endpoint, c.secret, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), "s3-secret-value") {
			t.Errorf("the error shows the secret: %q", err)
		}
	}
}
