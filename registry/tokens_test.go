package registry

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// TestAnonymousTokensAcrossRepositories: anonymous pulls of many
// repositories cost one token request per repository on an upstream whose
// tokens are per repository (Docker Hub), and a couple in all on one whose
// anonymous tokens pull any public repository. Every pull gets its image.
func TestAnonymousTokensAcrossRepositories(t *testing.T) {
	const repos = 12
	for _, c := range []struct {
		wide      bool
		maxTokens int64
	}{
		{wide: false, maxTokens: repos},
		// One for the first repository, one more before a token is
		// lent: then none.
		{wide: true, maxTokens: 2},
	} {
		t.Run(fmt.Sprintf("wide=%v", c.wide), func(t *testing.T) {
			up := testupstream.Start(t, testupstream.Options{WideAnonymousTokens: c.wide})
			up.SetPrivate("team/private", "alice", "alice-pw")
			images := make([]v1.Image, repos)
			for i := range images {
				images[i] = up.PushRandomImage(t, fmt.Sprintf("team/app%d", i), "v1", 1, 512)
			}
			up.PushRandomImage(t, "team/private", "v1", 1, 512)
			_, srv := newTestProxy(t, up, time.Minute)
			host := strings.TrimPrefix(srv.URL, "http://")
			pull := func(repo string) (v1.Image, error) {
				ref, err := name.ParseReference(host+"/"+repo+":v1", name.Insecure)
				if err != nil {
					t.Fatal(err)
				}
				img, err := remote.Image(ref, remote.WithRetryBackoff(remote.Backoff{Duration: time.Millisecond, Steps: 1}))
				if err != nil {
					return nil, err
				}
				_, err = img.Layers()
				return img, err
			}
			for i, want := range images {
				got, err := pull(fmt.Sprintf("team/app%d", i))
				if err != nil {
					t.Fatalf("team/app%d: %v", i, err)
				}
				if err := testupstream.SameImage(got, want); err != nil {
					t.Errorf("team/app%d: %v", i, err)
				}
			}
			if n := up.Counters.TokenRequests(); n > c.maxTokens {
				t.Errorf("%d token requests for %d repositories, want at most %d", n, repos, c.maxTokens)
			}
			// A lent anonymous token does not open a private repository.
			if _, err := pull("team/private"); err == nil {
				t.Error("an anonymous pull of a private repository succeeded")
			}
		})
	}
}
