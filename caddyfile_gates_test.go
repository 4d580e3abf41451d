package dockerproxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// Hashes as caddy hash-password prints them (cheap parameters, for
// tests): alice-pass in bcrypt, bob-pass in argon2id.
const (
	aliceHash = "$2a$04$IaJTF31jKLEhhA6REkeb1OXlwCM3kjxjr0vl6fTmiujJnwn1mNuX6"
	bobHash   = "$argon2id$v=19$m=1024,t=1,p=1$elJPxupo7A3e2K5BtBBpyQ$EMwgpvug3lLKSjyi5Fq1U4GJwTcIIZL+7i0+J76+yWI"
)

func TestUnmarshalCaddyfileGates(t *testing.T) {
	input := "docker_proxy docker.io {\n" +
		"\troute ghcr.example.com ghcr.io\n" +
		"\tusers {\n\t\talice " + aliceHash + "\n\t\tbob " + bobHash + "\n\t\tcarol {env.CAROL_HASH}\n\t}\n" +
		"\tallow docker.io library/* bitnami/**\n" +
		"\tdeny ghcr.io somebody/*\n" +
		"\tdeny docker.io library/evil\n" +
		"}"
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatal(err)
	}
	wantUsers := []User{{"alice", aliceHash}, {"bob", bobHash}, {"carol", "{env.CAROL_HASH}"}}
	if len(h.Users) != len(wantUsers) {
		t.Fatalf("users = %+v", h.Users)
	}
	for i, u := range wantUsers {
		if h.Users[i] != u {
			t.Errorf("user %d = %+v, want %+v", i, h.Users[i], u)
		}
	}
	wantRules := []registry.RuleConfig{
		{Action: "allow", Upstream: "docker.io", Patterns: []string{"library/*", "bitnami/**"}},
		{Action: "deny", Upstream: "ghcr.io", Patterns: []string{"somebody/*"}},
		{Action: "deny", Upstream: "docker.io", Patterns: []string{"library/evil"}},
	}
	if len(h.Rules) != len(wantRules) {
		t.Fatalf("rules = %+v", h.Rules)
	}
	for i, r := range wantRules {
		if h.Rules[i].String() != r.String() || h.Rules[i].Action != r.Action {
			t.Errorf("rule %d = %+v, want %+v", i, h.Rules[i], r)
		}
	}
	if err := h.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestUnmarshalCaddyfileGateErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string
		line  int
		want  []string
	}{
		{"users repeated", "docker_proxy docker.io {\n\tusers {\n\t\talice " + aliceHash + "\n\t}\n\tusers {\n\t\tbob " + bobHash + "\n\t}\n}", 5, []string{"users already specified"}},
		{"users with an argument", "docker_proxy docker.io {\n\tusers alice {\n\t}\n}", 2, []string{"wrong argument count"}},
		{"users empty", "docker_proxy docker.io {\n\tusers {\n\t}\n}", 3, []string{"at least one account"}},
		{"users without block", "docker_proxy docker.io {\n\tusers\n}", 2, []string{"at least one account"}},
		{"user given twice", "docker_proxy docker.io {\n\tusers {\n\t\talice " + aliceHash + "\n\t\talice " + bobHash + "\n\t}\n}", 4, []string{"user 'alice' already specified"}},
		{"user without hash", "docker_proxy docker.io {\n\tusers {\n\t\talice\n\t}\n}", 3, []string{"wrong argument count", "'alice'"}},
		{"user with two hashes", "docker_proxy docker.io {\n\tusers {\n\t\talice " + aliceHash + " " + bobHash + "\n\t}\n}", 3, []string{"wrong argument count"}},
		{"user name with a colon", "docker_proxy docker.io {\n\tusers {\n\t\ta:b " + aliceHash + "\n\t}\n}", 3, []string{"invalid user name 'a:b'"}},
		{"plain password for a hash", "docker_proxy docker.io {\n\tusers {\n\t\talice hunter2\n\t}\n}", 3, []string{"malformed password hash for user 'alice'", "caddy hash-password"}},
		{"truncated bcrypt hash", "docker_proxy docker.io {\n\tusers {\n\t\talice " + aliceHash[:20] + "\n\t}\n}", 3, []string{"malformed password hash for user 'alice'"}},
		{"bad bcrypt cost", "docker_proxy docker.io {\n\tusers {\n\t\talice $2a$99" + aliceHash[6:] + "\n\t}\n}", 3, []string{"malformed password hash for user 'alice'"}},
		{"bad argon2id hash", "docker_proxy docker.io {\n\tusers {\n\t\tbob $argon2id$v=19$m=1024$x$y\n\t}\n}", 3, []string{"malformed password hash for user 'bob'"}},
		{"user with a block", "docker_proxy docker.io {\n\tusers {\n\t\talice " + aliceHash + " {\n\t\t}\n\t}\n}", 3, []string{"unexpected block"}},

		{"allow without arguments", "docker_proxy docker.io {\n\tallow\n}", 2, []string{"wrong argument count", "'allow'"}},
		{"deny without patterns", "docker_proxy docker.io {\n\tdeny docker.io\n}", 2, []string{"wrong argument count", "'docker.io'"}},
		{"allow unknown upstream", "docker_proxy docker.io {\n\tallow dockerhub library/*\n}", 2, []string{`unknown upstream "dockerhub"`}},
		{"allow upstream not served", "docker_proxy docker.io {\n\tcache off\n\tallow ghcr.io owner/*\n}", 3, []string{"upstream ghcr.io is not served by this handler", "docker.io"}},
		{"deny upstream not served, second rule", "docker_proxy docker.io {\n\tallow docker.io library/*\n\tdeny quay.io x/*\n}", 3, []string{"upstream quay.io is not served"}},
		{"pattern with upper case", "docker_proxy docker.io {\n\tallow docker.io Library/*\n}", 2, []string{"pattern 'Library/*' cannot match any repository name of docker.io"}},
		{"pattern with a leading slash", "docker_proxy ghcr.io {\n\tdeny ghcr.io /owner\n}", 2, []string{"pattern '/owner' cannot match"}},
		{"pattern with a double slash", "docker_proxy ghcr.io {\n\tdeny ghcr.io a//b\n}", 2, []string{"pattern 'a//b' cannot match"}},
		{"pattern with a tag", "docker_proxy ghcr.io {\n\tdeny ghcr.io owner/app:1\n}", 2, []string{"pattern 'owner/app:1' cannot match"}},
		{"pattern ending in a separator", "docker_proxy ghcr.io {\n\tallow ghcr.io owner-\n}", 2, []string{"pattern 'owner-' cannot match"}},
		{"one-component pattern on Docker Hub", "docker_proxy docker.io {\n\tallow docker.io alpine\n}", 2, []string{"pattern 'alpine' cannot match", "library/"}},
		{"second pattern bad", "docker_proxy docker.io {\n\tallow docker.io library/* Bad\n}", 2, []string{"pattern 'Bad' cannot match"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caddyfileError(t, tt.input, tt.line, tt.want...)
		})
	}
}

// A JSON config gets the same checks as the Caddyfile.
func TestValidateGates(t *testing.T) {
	tests := []struct {
		name string
		h    Handler
		want string
	}{
		{"user twice", Handler{Upstream: "docker.io", Users: []User{{"a", aliceHash}, {"a", bobHash}}}, "user 'a' already specified"},
		{"malformed hash", Handler{Upstream: "docker.io", Users: []User{{"a", "secret"}}}, "malformed password hash"},
		{"empty user name", Handler{Upstream: "docker.io", Users: []User{{"", aliceHash}}}, "invalid user name"},
		{"rule for an upstream not served", Handler{Upstream: "docker.io", Rules: []registry.RuleConfig{{Action: "deny", Upstream: "ghcr.io", Patterns: []string{"a/*"}}}}, "not served"},
		{"rule with a bad action", Handler{Upstream: "docker.io", Rules: []registry.RuleConfig{{Action: "block", Upstream: "docker.io", Patterns: []string{"a/*"}}}}, "want allow or deny"},
		{"rule without patterns", Handler{Upstream: "docker.io", Rules: []registry.RuleConfig{{Action: "deny", Upstream: "docker.io"}}}, "at least one"},
		{"rule pattern that cannot match", Handler{Upstream: "docker.io", Rules: []registry.RuleConfig{{Action: "deny", Upstream: "docker.io", Patterns: []string{"A/*"}}}}, "cannot match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.h.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// The complete Caddyfile of the README's "Who may use the proxy" adapts
// and passes Caddy's validation, every module provisioned (its client CA
// file made here), and its sites have the gates it describes.
func TestReadmeGatesCaddyfileValidates(t *testing.T) {
	block := readmeCaddyfile(t, "Who may use the proxy")
	dir := t.TempDir()
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	t.Setenv("DOCKERHUB_USER", "hubuser")
	t.Setenv("DOCKERHUB_TOKEN", "hub-token")
	t.Setenv("CI_PASSWORD_HASH", aliceHash)
	caPath := filepath.Join(dir, "client-ca.pem")
	writeTestCA(t, caPath)
	if !strings.Contains(block, "/etc/caddy/client-ca.pem") {
		t.Fatal("the block names no client CA file")
	}
	block = strings.ReplaceAll(block, "/etc/caddy/client-ca.pem", caPath)
	block = strings.Replace(block, "{\n\temail ops@example.com\n}", "{\n\temail ops@example.com\n\tskip_install_trust\n\tadmin off\n}", 1)

	cfg := adaptAndValidate(t, block)
	var v any
	_ = json.Unmarshal(cfg, &v)
	handlers := findHandlers(v, "docker_proxy")
	if len(handlers) != 3 {
		t.Fatalf("%d docker_proxy handlers, want 3", len(handlers))
	}
	withUsers, withRules := 0, 0
	for _, h := range handlers {
		if h["users"] != nil {
			withUsers++
		}
		if h["rules"] != nil {
			withRules++
		}
	}
	if withUsers != 1 || withRules != 3 {
		t.Errorf("%d handlers with users (want 1), %d with rules (want 3)", withUsers, withRules)
	}
	if !strings.Contains(string(cfg), `"client_authentication"`) || !strings.Contains(string(cfg), `"client_ip"`) {
		t.Error("the config has no client certificate or client_ip gate")
	}
}

// writeTestCA writes a self-signed CA certificate (PEM) to path.
func writeTestCA(t *testing.T, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test client CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
