package dockerproxy

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

// The Caddyfile block of a scheduled prefetch:
//
//	prefetch {
//		interval <duration>
//		images <reference>...
//		platforms <os/arch[/variant]>...
//	}

// parsePrefetch parses the prefetch block; the current token is
// "prefetch". Whether the handler serves each image's registry is known
// only at the end of the directive: checkPrefetchRegistries does that.
func (h *Handler) parsePrefetch(d *caddyfile.Dispenser) error {
	if h.Prefetch != nil {
		return d.Errf("prefetch already specified")
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	c := &PrefetchConfig{}
	seenImages := map[string]bool{}
	seenPlatforms := map[registry.Platform]bool{}
	var haveInterval bool
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch sub := d.Val(); sub {
		case "interval":
			if _, err := singleArg(d, haveInterval); err != nil {
				return err
			}
			haveInterval = true
			interval, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("invalid interval '%s': %v", d.Val(), err)
			}
			if interval < minPrefetchInterval {
				return d.Errf("invalid interval '%s': at least %s", d.Val(), minPrefetchInterval)
			}
			c.Interval = caddy.Duration(interval)

		case "images":
			if !d.NextArg() {
				return d.ArgErr()
			}
			for ok := true; ok; ok = d.NextArg() {
				ref, err := registry.ParsePullRef(d.Val())
				if err != nil {
					return d.Errf("%v", err)
				}
				if seenImages[ref.String()] {
					return d.Errf("image %s already specified", ref)
				}
				seenImages[ref.String()] = true
				c.Images = append(c.Images, d.Val())
			}

		case "platforms":
			if c.Platforms != nil {
				return d.Errf("platforms already specified")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			for ok := true; ok; ok = d.NextArg() {
				p, err := registry.ParsePlatform(d.Val())
				if err != nil {
					return d.Errf("%v", err)
				}
				if seenPlatforms[p] {
					return d.Errf("platform %s already specified", p)
				}
				seenPlatforms[p] = true
				c.Platforms = append(c.Platforms, d.Val())
			}

		case "{":
			return d.Errf("unexpected block: prefetch subdirectives take none")
		default:
			return d.Errf("unknown prefetch subdirective '%s'", sub)
		}
	}
	switch {
	case !haveInterval:
		backToBlockStart(d)
		return d.Errf("prefetch needs an interval, such as 'interval 6h'")
	case len(c.Images) == 0:
		backToBlockStart(d)
		return d.Errf("prefetch needs images: 'images <reference>...'")
	case len(c.Images) > maxPrefetchImages:
		backToBlockStart(d)
		return d.Errf("prefetch: %d images, more than %d", len(c.Images), maxPrefetchImages)
	}
	h.Prefetch = c
	return nil
}

// checkPrefetchRegistries checks, once the whole directive is read, that
// the handler serves the registry of every image to prefetch, and that
// the cache is on; an error points at the image (or the block).
func (h *Handler) checkPrefetchRegistries(d *caddyfile.Dispenser) error {
	if h.Prefetch == nil {
		return nil
	}
	if h.Cache != nil && h.Cache.Disabled {
		findToken(d, "prefetch")
		return d.Errf("prefetch fills the cache, which is off")
	}
	router, err := registry.NewRouter(h.routerConfig())
	if err != nil {
		return nil // reported by Validate with its own message
	}
	for _, s := range h.Prefetch.Images {
		ref, _ := registry.ParsePullRef(s) // parsed when read
		if _, ok := router.ByName(ref.Registry); !ok {
			findToken(d, s)
			return d.Errf("image %s: registry %s is not one this handler serves (%v)", s, ref.Registry, router.Names())
		}
	}
	return nil
}

// findToken moves the cursor to the first token whose text is s (for
// the line number of an error about it).
func findToken(d *caddyfile.Dispenser, s string) {
	d.Reset()
	for d.Next() {
		if d.Val() == s {
			return
		}
	}
}
