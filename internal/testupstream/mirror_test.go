package testupstream

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestMirrorServesWhatTheRegistryRedirects walks the redirect by hand: the
// registry's 307 after its own auth, the mirror's challenge naming its own
// realm and scope, an anonymous mirror token, the content; and the record
// of a token that is not the mirror's.
func TestMirrorServesWhatTheRegistryRedirects(t *testing.T) {
	u := Start(t, Options{})
	img := u.PushRandomImage(t, "team/app", "1", 1, 512)
	u.PushImage(t, "team/app", "2", img)
	m := u.StartMirror(t, MirrorOptions{Tokens: true})
	tok := token(t, u, "", "", "repository:team/app:pull")

	resp, _ := do(t, "GET", u.URL+"/v2/team/app/manifests/1", nil)
	if resp.StatusCode != 401 {
		t.Fatalf("registry without a token: %d, want its own 401 first", resp.StatusCode)
	}
	resp, _ = do(t, "GET", u.URL+"/v2/team/app/tags/list?n=1", bearer(tok))
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 307 || loc != m.URL+"/v2/mirror/team/app/tags/list?n=1" {
		t.Fatalf("tags/list: %d Location %q", resp.StatusCode, loc)
	}
	resp, _ = do(t, "GET", loc, nil)
	ch := resp.Header.Get("Www-Authenticate")
	if resp.StatusCode != 401 || !strings.Contains(ch, `realm="`+m.Realm+`"`) || !strings.Contains(ch, `scope="repository:mirror/team/app:pull"`) {
		t.Fatalf("mirror without a token: %d %q", resp.StatusCode, ch)
	}
	resp, body := do(t, "GET", m.Realm+"?"+url.Values{"scope": {"repository:mirror/team/app:pull"}}.Encode(), nil)
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); resp.StatusCode != 200 || err != nil || tr.Token == "" {
		t.Fatalf("mirror token: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "GET", loc, bearer(tr.Token))
	if resp.StatusCode != 200 || string(body) != `{"name":"team/app","tags":["1"]}` ||
		resp.Header.Get("Link") != `</v2/mirror/team/app/tags/list?last=1&n=1>; rel="next"` {
		t.Fatalf("mirror tags/list: %d %s %v", resp.StatusCode, body, resp.Header)
	}
	if got := m.ForeignAuthorizations(); len(got) != 0 {
		t.Fatalf("foreign authorizations before any were sent: %q", got)
	}
	_, _ = do(t, "GET", loc, bearer(tok))
	if got := m.ForeignAuthorizations(); len(got) != 1 || got[0] != "Bearer "+tok {
		t.Errorf("the registry's token at the mirror was recorded as %q", got)
	}

	m.SetStatus(http.StatusBadGateway)
	resp, body = do(t, "GET", loc, bearer(tr.Token))
	if resp.StatusCode != 502 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(body), "<html>") {
		t.Errorf("mirror status switch: %d %s", resp.StatusCode, body)
	}
}
