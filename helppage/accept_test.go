package helppage

import "testing"

func TestPrefersHTML(t *testing.T) {
	tests := []struct {
		name   string
		accept []string
		want   bool
	}{
		{"chromium", []string{"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"}, true},
		{"firefox", []string{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}, true},
		{"safari", []string{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}, true},
		{"no Accept", nil, false},
		{"curl", []string{"*/*"}, false},
		{"empty value", []string{""}, false},
		{"json", []string{"application/json"}, false},
		{"docker's manifest types", []string{"application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json"}, false},
		{"html and json alike", []string{"text/html, application/json"}, false},
		{"json preferred", []string{"text/html;q=0.5, application/json"}, false},
		{"html preferred to json", []string{"application/json;q=0.5, text/html"}, true},
		{"html preferred to the wildcard", []string{"text/html;q=0.9, */*;q=0.1"}, true},
		{"html refused, wildcard taken", []string{"text/html;q=0, */*"}, false},
		{"text/* only", []string{"text/*"}, true},
		{"text/* but html refused", []string{"text/*, text/html;q=0"}, false},
		{"the most specific range wins, whatever the order", []string{"text/html;q=0.2, text/*;q=1, application/json;q=0.3"}, false},
		{"html only below an explicit json", []string{"text/*;q=0.6, application/json;q=0.5"}, true},
		{"html, in a second header line", []string{"application/json;q=0.1", "text/html"}, true},
		{"range with a parameter does not apply to text/html", []string{"text/html;level=1, */*;q=0.5"}, false},
		{"upper case", []string{"TEXT/HTML"}, true},
		{"q of 1.000", []string{"text/html;q=1.000, */*;q=0.999"}, true},
		{"invalid q skipped", []string{"text/html;q=2, */*"}, false},
		{"invalid q with exponent skipped", []string{"text/html;q=1e0, */*;q=0.5"}, false},
		{"q with four decimals skipped", []string{"text/html;q=0.5000, application/json;q=0.1"}, false},
		{"malformed range skipped", []string{"text/html/x, text/html;q=0.3, */*;q=0.2"}, true},
		{"garbage", []string{";;;,,,=,q=1"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PrefersHTML(tt.accept); got != tt.want {
				t.Errorf("PrefersHTML(%q) = %v, want %v", tt.accept, got, tt.want)
			}
		})
	}
}

func FuzzPrefersHTML(f *testing.F) {
	for _, s := range []string{"text/html,*/*;q=0.8", "*/*", "text/*;q=0.5, text/html;q=0", "application/json", `text/html;foo="a,b"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, accept string) {
		for _, typ := range [][2]string{{"text", "html"}, {"application", "json"}} {
			if q := quality([]string{accept}, typ[0], typ[1]); q < 0 || q > 1 {
				t.Errorf("quality of %s/%s = %v for %q", typ[0], typ[1], q, accept)
			}
		}
		// An explicit application/json at q=1, first, is never beaten:
		// such a client keeps the registry's answers whatever follows.
		if PrefersHTML([]string{"application/json", accept}) {
			t.Errorf("application/json, %q prefers HTML", accept)
		}
	})
}
