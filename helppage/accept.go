package helppage

import (
	"mime"
	"strconv"
	"strings"
)

// PrefersHTML reports whether the Accept values of a request prefer
// text/html to application/json, the registry API's own type: text/html
// must be acceptable and strictly preferred. Each type's quality is the q
// of the most specific media range that matches it (RFC 9110, 12.5.1):
// text/html, else text/*, else */*. So a browser
// (text/html,...,*/*;q=0.8) gets the page, while a request without Accept,
// curl's */*, and registry clients, which name manifest types, tie or
// prefer JSON and keep the registry's answers.
func PrefersHTML(values []string) bool {
	html := quality(values, "text", "html")
	return html > 0 && html > quality(values, "application", "json")
}

// quality is the q that Accept values give typ/sub: that of the most
// specific range matching it, the first such range if several are equally
// specific; 1 without any Accept value (RFC 9110: any type is acceptable),
// 0 when no range matches. Ranges that do not parse, carry an invalid q,
// or carry parameters other than q (which a plain typ/sub does not have)
// are skipped.
func quality(values []string, typ, sub string) float64 {
	if len(values) == 0 {
		return 1
	}
	best, bestSpecificity := 0.0, -1
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			mt, params, err := mime.ParseMediaType(part)
			if err != nil {
				continue
			}
			q := 1.0
			if raw, ok := params["q"]; ok {
				if q, ok = parseQ(raw); !ok {
					continue
				}
				delete(params, "q")
			}
			if len(params) > 0 {
				continue
			}
			rangeType, rangeSub, _ := strings.Cut(mt, "/")
			specificity := -1
			switch {
			case rangeType == typ && rangeSub == sub:
				specificity = 2
			case rangeType == typ && rangeSub == "*":
				specificity = 1
			case rangeType == "*" && rangeSub == "*":
				specificity = 0
			}
			if specificity > bestSpecificity {
				best, bestSpecificity = q, specificity
			}
		}
	}
	return best
}

// parseQ parses a qvalue (RFC 9110, 12.4.2): 0 to 1 with at most three
// decimals.
func parseQ(s string) (float64, bool) {
	if s == "" || len(s) > 5 || (s[0] != '0' && s[0] != '1') {
		return 0, false
	}
	if len(s) > 1 && s[1] != '.' {
		return 0, false
	}
	q, err := strconv.ParseFloat(s, 64)
	if err != nil || q < 0 || q > 1 || strings.ContainsAny(s, "eE+-") {
		return 0, false
	}
	return q, true
}
