package dockerproxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPageTemplateErrorsFailProvision: an own page that cannot be read,
// parsed or executed stops the config from loading, with the reason,
// rather than failing in front of a visitor.
func TestPageTemplateErrorsFailProvision(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.html", "<p>{{.Host}}</p>")
	for _, c := range []struct {
		name string
		page map[string]any
		want string // in the error; empty: no error
	}{
		{"built-in", nil, ""},
		{"off", map[string]any{"disabled": true}, ""},
		{"own template", map[string]any{"template": good}, ""},
		{"missing file", map[string]any{"template": filepath.Join(dir, "missing.html")}, "page: reading template"},
		{"syntax error", map[string]any{"template": write("syntax.html", "<p>{{.Host</p>")}, "page: template " + filepath.Join(dir, "syntax.html")},
		{"unknown field", map[string]any{"template": write("field.html", "<p>{{.UpstreamURL}}</p>")}, "UpstreamURL"},
		{"off with a template", map[string]any{"disabled": true, "template": good}, "a template for a page that is off"},
	} {
		t.Run(c.name, func(t *testing.T) {
			handler := map[string]any{"upstream": "docker.io"}
			if c.page != nil {
				handler["page"] = c.page
			}
			err := validateJSON(t, handler)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("error %v, want one with %q", err, c.want)
			}
		})
	}
}
