package dockerproxy

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// readmeCaddyfile returns the first caddyfile block of the README's
// section with this title (its "## " heading).
func readmeCaddyfile(t *testing.T, title string) string {
	t.Helper()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## "+title+"\n")
	if !ok {
		t.Fatalf("README has no section %q", title)
	}
	_, block, ok := strings.Cut(section, "```caddyfile\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatalf("no caddyfile block in the README's section %q", title)
	}
	return block
}

// adaptAndValidate adapts a Caddyfile, which must give no warning, and
// runs Caddy's validation of the result (every module provisioned, the
// config not started); it returns the adapted JSON.
func adaptAndValidate(t *testing.T, caddyfile string) []byte {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("warning: %s", w.Message)
	}
	var full caddy.Config
	if err := json.Unmarshal(cfg, &full); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&full); err != nil {
		t.Fatalf("validate: %v", err)
	}
	return cfg
}
