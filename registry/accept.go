package registry

// Accept: the client's Accept values reduced to what can change a
// registry's answer, both for the upstream request and for record keys.

import (
	"mime"
	"sort"
	"strings"
	"sync"
)

// acceptKeys remembers acceptKey's answers: clients send a handful of
// distinct Accept headers, each with every manifest request, and parsing
// them was a tenth of a cache hit's cost.
var acceptKeys struct {
	sync.Mutex
	m map[string]string
}

// acceptKeysMax bounds the memo, which starts over when full, and
// acceptKeyMaxMemo the longest Accept value it memoises (real clients send
// less).
const (
	acceptKeysMax    = 1024
	acceptKeyMaxMemo = 1024
)

// acceptKey returns the normalised form of Accept values (see
// normaliseAccept), memoised.
func acceptKey(values []string) string {
	raw := strings.Join(values, "\n")
	acceptKeys.Lock()
	key, ok := acceptKeys.m[raw]
	acceptKeys.Unlock()
	if ok {
		return key
	}
	key = normaliseAccept(values)
	if len(raw) > acceptKeyMaxMemo {
		return key // not worth the memory
	}
	acceptKeys.Lock()
	if acceptKeys.m == nil || len(acceptKeys.m) >= acceptKeysMax {
		acceptKeys.m = make(map[string]string)
	}
	acceptKeys.m[raw] = key
	acceptKeys.Unlock()
	return key
}

// normaliseAccept reduces Accept values to what can change a registry's
// answer, as one value that is both the Accept sent upstream and the Accept
// part of record keys, so the two never disagree:
//   - only the media ranges in acceptRanges count; others, and ranges
//     that do not parse (or carry a q that is not an RFC 9110 qvalue), are
//     dropped, so meaningless variations cannot multiply records;
//   - a range with q=0 is "not acceptable" (RFC 9110, 12.4.2): it is left
//     out, or, when an accepted wildcard would otherwise admit it, left in as
//     "<type>;q=0"; other q values are dropped (registries choose by their
//     own preference, not by weight);
//   - a range both accepted and refused is refused;
//   - lower case, sorted, de-duplicated, joined by ",".
func normaliseAccept(values []string) string {
	accepted := map[string]bool{}
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || !acceptRanges[mt] {
				continue
			}
			ok := true
			if q, has := params["q"]; has {
				zero, valid := parseQValue(q)
				if !valid {
					continue
				}
				ok = !zero
			}
			if prev, seen := accepted[mt]; seen {
				ok = ok && prev
			}
			accepted[mt] = ok
		}
	}
	wildcard := accepted["*/*"] || accepted["application/*"]
	out := make([]string, 0, len(accepted))
	for mt, ok := range accepted {
		switch {
		case ok:
			out = append(out, mt)
		case wildcard:
			out = append(out, mt+";q=0")
		}
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// parseQValue checks a qvalue (RFC 9110, 12.4.2: "0" ["." 0*3DIGIT] or
// "1" ["." 0*3"0"]) and reports whether it is zero.
func parseQValue(q string) (zero, valid bool) {
	if q == "" || len(q) > 5 || (q[0] != '0' && q[0] != '1') {
		return false, false
	}
	frac := q[1:]
	if frac != "" {
		if frac[0] != '.' {
			return false, false
		}
		frac = frac[1:]
	}
	for _, c := range frac {
		if c < '0' || c > '9' || (q[0] == '1' && c != '0') {
			return false, false
		}
	}
	return q[0] == '0' && strings.Trim(frac, "0") == "", true
}
