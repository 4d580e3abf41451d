package dockerproxy

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfilePrefetch(t *testing.T) {
	input := "docker_proxy {\n\tdomain example.com\n\tprefetch {\n\t\tinterval 6h\n\t\timages alpine:3.20 ghcr.io/org/tool:1\n\t\timages docker.io/team/app:2\n\t\tplatforms linux/amd64 linux/arm64/v8\n\t}\n}"
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatal(err)
	}
	want := PrefetchConfig{
		Interval:  caddy.Duration(6 * time.Hour),
		Images:    []string{"alpine:3.20", "ghcr.io/org/tool:1", "docker.io/team/app:2"},
		Platforms: []string{"linux/amd64", "linux/arm64/v8"},
	}
	if h.Prefetch == nil || h.Prefetch.Interval != want.Interval || strings.Join(h.Prefetch.Images, " ") != strings.Join(want.Images, " ") ||
		strings.Join(h.Prefetch.Platforms, " ") != strings.Join(want.Platforms, " ") {
		t.Fatalf("prefetch = %+v, want %+v", h.Prefetch, want)
	}
	if err := h.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestUnmarshalCaddyfilePrefetchErrors(t *testing.T) {
	const ok = "\t\tinterval 1h\n\t\timages alpine:3.20\n"
	for _, tc := range []struct {
		name  string
		input string
		line  int
		want  []string
	}{
		{"repeated", "docker_proxy docker.io {\n\tprefetch {\n" + ok + "\t}\n\tprefetch {\n" + ok + "\t}\n}", 6, []string{"prefetch already specified"}},
		{"with an argument", "docker_proxy docker.io {\n\tprefetch now {\n" + ok + "\t}\n}", 2, []string{"wrong argument count"}},
		{"unknown subdirective", "docker_proxy docker.io {\n\tprefetch {\n" + ok + "\t\tevery 1h\n\t}\n}", 5, []string{"unknown prefetch subdirective 'every'"}},
		{"nested block", "docker_proxy docker.io {\n\tprefetch {\n" + ok + "\t\t{\n\t\t}\n\t}\n}", 5, []string{"unexpected block"}},
		{"interval repeated", "docker_proxy docker.io {\n\tprefetch {\n" + ok + "\t\tinterval 2h\n\t}\n}", 5, []string{"interval already specified"}},
		{"interval malformed", "docker_proxy docker.io {\n\tprefetch {\n\t\tinterval soon\n\t\timages alpine\n\t}\n}", 3, []string{"invalid interval 'soon'"}},
		{"interval too short", "docker_proxy docker.io {\n\tprefetch {\n\t\tinterval 30s\n\t\timages alpine\n\t}\n}", 3, []string{"at least 1m0s"}},
		{"interval without value", "docker_proxy docker.io {\n\tprefetch {\n\t\tinterval\n\t\timages alpine\n\t}\n}", 3, []string{"wrong argument count"}},
		{"no interval", "docker_proxy docker.io {\n\tprefetch {\n\t\timages alpine\n\t}\n}", 2, []string{"prefetch needs an interval"}},
		{"no images", "docker_proxy docker.io {\n\tprefetch {\n\t\tinterval 1h\n\t}\n}", 2, []string{"prefetch needs images"}},
		{"images without a value", "docker_proxy docker.io {\n\tprefetch {\n\t\tinterval 1h\n\t\timages\n\t}\n}", 4, []string{"wrong argument count"}},
		{"malformed image", "docker_proxy docker.io {\n\tprefetch {\n\t\tinterval 1h\n\t\timages alpine docker.io/Team/App:1\n\t}\n}", 4, []string{"docker.io/Team/App:1", "lowercase"}},
		{"image twice", "docker_proxy docker.io {\n\tprefetch {\n\t\tinterval 1h\n\t\timages alpine\n\t\timages docker.io/library/alpine:latest\n\t}\n}", 5, []string{"image docker.io/library/alpine:latest already specified"}},
		{"registry not served", "docker_proxy docker.io {\n\tprefetch {\n\t\tinterval 1h\n\t\timages alpine quay.io/org/app:1\n\t}\n}", 4, []string{"registry quay.io is not one this handler serves"}},
		{"platforms repeated", "docker_proxy docker.io {\n\tprefetch {\n" + ok + "\t\tplatforms linux/amd64\n\t\tplatforms linux/arm64\n\t}\n}", 6, []string{"platforms already specified"}},
		{"platform malformed", "docker_proxy docker.io {\n\tprefetch {\n" + ok + "\t\tplatforms linux/amd64 linux\n\t}\n}", 5, []string{"platform \"linux\"", "os/architecture"}},
		{"platform twice", "docker_proxy docker.io {\n\tprefetch {\n" + ok + "\t\tplatforms linux/arm64 linux/aarch64\n\t}\n}", 5, []string{"platform linux/arm64 already specified"}},
		{"cache off", "docker_proxy docker.io {\n\tcache off\n\tprefetch {\n" + ok + "\t}\n}", 3, []string{"prefetch fills the cache, which is off"}},
	} {
		t.Run(tc.name, func(t *testing.T) { caddyfileError(t, tc.input, tc.line, tc.want...) })
	}
}

// TestValidatePrefetch: a JSON config gets the checks the Caddyfile
// makes.
func TestValidatePrefetch(t *testing.T) {
	good := func() *Handler {
		return &Handler{Upstream: "docker.io", Prefetch: &PrefetchConfig{Interval: caddy.Duration(time.Hour), Images: []string{"alpine:3.20"}}}
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(h *Handler)
		want   string
	}{
		{"no interval", func(h *Handler) { h.Prefetch.Interval = 0 }, "interval 0s is shorter than 1m0s"},
		{"no images", func(h *Handler) { h.Prefetch.Images = nil }, "no images"},
		{"malformed image", func(h *Handler) { h.Prefetch.Images = []string{"Alpine"} }, "image \"Alpine\""},
		{"image twice", func(h *Handler) { h.Prefetch.Images = []string{"alpine", "docker.io/library/alpine"} }, "given twice"},
		{"registry not served", func(h *Handler) { h.Prefetch.Images = []string{"ghcr.io/org/tool:1"} }, "registry ghcr.io is not one this handler serves"},
		{"platform malformed", func(h *Handler) { h.Prefetch.Platforms = []string{"linux"} }, "os/architecture"},
		{"cache off", func(h *Handler) { h.Cache = &CacheConfig{Disabled: true} }, "the cache is off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := good()
			tc.change(h)
			if err := h.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestReadmePrefetchCaddyfileValidates: the README's prefetch block adapts
// and passes Caddy's validation, every module provisioned; validation
// provisions the handler without starting the config, so its schedule
// does not start.
func TestReadmePrefetchCaddyfileValidates(t *testing.T) {
	block := readmeCaddyfile(t, "Prefetch")
	dir := t.TempDir()
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	before := len(live.all())
	cfg := adaptAndValidate(t, "{\n\tskip_install_trust\n\tadmin off\n}\n"+block)
	if !strings.Contains(string(cfg), `"prefetch":{"images":["docker.io/library/alpine:3.20","nginx:1.27","docker.io/bitnami/redis:7.4"],"interval":21600000000000,"platforms":["linux/amd64","linux/arm64"]}`) {
		t.Errorf("adapted config: %s", cfg)
	}
	if len(live.all()) != before {
		t.Error("validation left a handler live")
	}
}

// TestPrefetchScheduleWaitsForStart: a handler provisioned in a config
// that has not started (caddy validate, a config still loading) does not
// start its schedule.
func TestPrefetchScheduleWaitsForStart(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &Handler{
		Upstream: "docker.io",
		AuthKey:  "0123456789abcdef0123456789abcdef",
		Cache:    &CacheConfig{Dir: filepath.Join(dir, "cache")},
		Prefetch: &PrefetchConfig{Interval: caddy.Duration(time.Hour), Images: []string{"alpine:3.20"}},
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer h.Cleanup()
	if h.prefetch == nil || h.prefetch.started.Load() {
		t.Fatalf("schedule %+v: want one, not started", h.prefetch)
	}
}
