package dockerproxy

import (
	"context"
	"slices"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

func TestLiveHandlersFollowProvisionAndCleanup(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &Handler{
		Upstream: "docker.io",
		AuthKey:  "0123456789abcdef0123456789abcdef",
		Cache:    &CacheConfig{Disabled: true},
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(live.all(), h) {
		t.Fatal("a provisioned handler is not among the live ones")
	}
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(live.all(), h) {
		t.Fatal("a cleaned-up handler is still among the live ones")
	}
}
