package dockerproxy

import (
	"math"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache/s3remote"
	"github.com/caddy-dockerproxy/dockerproxy/registry"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("docker_proxy", parseCaddyfile)
	// docker_proxy answers requests itself, like reverse_proxy. Ordering
	// it just before reverse_proxy puts it after the directives that
	// prepare or guard a request (basic_auth, forward_auth, header,
	// encode, request_body, rewrite, ...) and before the other terminal
	// handlers (reverse_proxy, php_fastcgi, file_server, ...), so that no
	// "order" global option or route block is needed.
	httpcaddyfile.RegisterDirectiveOrder("docker_proxy", httpcaddyfile.Before, "reverse_proxy")
}

// parseCaddyfile sets up a Handler from the docker_proxy directive. The
// directive takes the usual optional matcher in front of its arguments,
// which httpcaddyfile strips before this runs.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	dp := new(Handler)
	if err := dp.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return dp, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	docker_proxy [<matcher>] [<upstream>] {
//		domain <domain>
//		route <host> <upstream>
//		upstream <name> <url>
//		fallback <upstream>
//		credentials [<upstream>] <username> <secret>
//		auth_key <key>
//		users {
//			<name> <hash>
//		}
//		allow <upstream> <pattern>...
//		deny <upstream> <pattern>...
//		cache off
//		cache [<dir>] {
//			max_size <size>
//			tag_ttl <duration>
//			negative_ttl <duration>
//			s3 {
//				endpoint <url>
//				bucket <name>
//				region <region>
//				prefix <prefix>
//				access_key <id>
//				secret_key <secret>
//			}
//		}
//		transport <module> {
//			...
//		}
//		page off | <template file>
//		prefetch {
//			interval <duration>
//			images <reference>...
//			platforms <os/arch[/variant]>...
//		}
//	}
//
// An <upstream> is a well-known registry name (docker.io, ghcr.io, quay.io,
// gcr.io, k8s.gcr.io, registry.k8s.io, docker.cloudsmith.io, public.ecr.aws,
// nvcr.io, mcr.microsoft.com, or an alias such as index.docker.io) or an
// http(s) URL with nothing but scheme and host, e.g. http://127.0.0.1:5000.
// The argument of the directive is the default upstream: the one for hosts
// that have no route of their own.
//
//   - domain adds the host table of cloudflare-docker-proxy on <domain>:
//     docker.<domain> to Docker Hub, ghcr.<domain> to ghcr.io, and so on.
//     <domain> must be a DNS name (letters, digits, hyphens, dots), not an
//     IP address; it is stored in lower case.
//   - route sends requests for <host> (a host name or IP address, without a
//     port; stored in lower case) to <upstream>. Repeatable, once per host.
//   - upstream points the well-known registry <name> at another <url>, for
//     example a private mirror; the name still follows its rules (Docker
//     Hub's library/ prefix). Repeatable, once per name.
//   - fallback is the upstream for hosts that match no route. Debug only: in
//     production an unknown host should get the list of routes.
//   - credentials are used towards <upstream> (default: the directive's
//     upstream) for clients that bring none. Repeatable, once per upstream.
//     Placeholders such as {env.DOCKERHUB_TOKEN} stay as written and are
//     expanded when the handler is provisioned; a username or secret that
//     expands to nothing (an unset variable) is an error then.
//   - auth_key seals the tokens that /v2/auth hands out; every instance
//     behind one load balancer needs the same key. Placeholders stay as written.
//   - users makes the site private: every client logs in (docker login
//     <host>) with one of these accounts; <hash> is what caddy
//     hash-password prints (bcrypt or argon2id). Once, with one line per
//     account. Upstream, clients are served with the proxy's own identity
//     (credentials, or anonymous).
//   - allow and deny say which repositories of <upstream> (one this
//     handler serves) are served: globs on the repository name as the
//     upstream knows it (library/alpine), * within a path component, **
//     across them. A deny that matches wins; with allow lines for an
//     upstream, a name must match one. Repeatable.
//   - cache off proxies every request. Otherwise the cache is on; <dir> is
//     its directory, max_size bounds it (50GiB, 500MB, 1073741824; 0 means
//     unbounded) and tag_ttl (5m, 1h, 1d; must be positive) is how long a
//     tag's digest is served without asking the upstream. negative_ttl
//     (0, the default, is off) is how long the upstream's 404 for a tag
//     is answered without asking again.
//   - s3 adds a shared tier behind the cache: an S3-compatible bucket that
//     several instances behind one load balancer share. endpoint (an http
//     or https URL: its scheme decides TLS) and bucket are required;
//     access_key and secret_key go together (without them, the standard
//     AWS credentials sign: environment, shared credentials file, instance
//     role); region (empty: AWS_REGION, else us-east-1; "auto" for R2) and prefix
//     (put before every object name) are optional.
//     Placeholders such as {env.S3_SECRET_KEY} stay as written and are
//     expanded when the handler is provisioned. Every handler naming the
//     same cache directory should give the same s3 block (a snippet helps).
//   - transport configures the connections to the upstreams with an
//     http.reverse_proxy.transport module and its block, exactly as in
//     reverse_proxy: "transport http" with dial_timeout, versions, tls_*,
//     keepalive and so on.
//   - page is what a browser gets at GET / of a routed host: by default a
//     page made for that host (its registries, host names and client
//     snippets); "page off" gives browsers the redirect to /v2/ that
//     every other client gets; "page <file>" renders the operator's own
//     html/template instead (placeholders are expanded at provision).
//   - prefetch pulls images into the cache when the config starts and then
//     every interval (at least 1m): references as docker pull takes them
//     (docker.io/library/alpine:3.20, ghcr.io/org/tool@sha256:...), each of
//     a registry this handler serves and each once; images may be repeated
//     to list more. platforms (default: all) picks the manifests of an
//     index. It needs the cache.
//
// At least one of the default upstream, domain, route or fallback is
// required. Every subdirective other than route, upstream, credentials,
// allow and deny may appear only once (within prefetch: images).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.Next() { // consume directive name
		return d.Err("expected the docker_proxy directive")
	}

	switch args := d.RemainingArgs(); len(args) {
	case 0:
	case 1:
		if _, err := h.parseUpstreamArg(d); err != nil {
			return err
		}
		h.Upstream = args[0]
	default:
		return d.ArgErr()
	}

	// Upstreams are validated where they are read, so that errors point
	// at their line. That is sound even before a later "upstream" line
	// overrides a name: a well-known name is valid with or without an
	// override, and every override URL is validated on its own line.
	credentialsFor := make(map[string]bool) // canonical upstream names
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch sub := d.Val(); sub {
		case "domain":
			domain, err := singleArg(d, h.Domain != "")
			if err != nil {
				return err
			}
			if err := registry.CheckDomain(domain); err != nil {
				return d.Errf("%v", err)
			}
			h.Domain = strings.ToLower(domain)

		case "route":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.ArgErr()
			}
			d.Prev() // back to the host, for error messages
			host, upstream := strings.ToLower(args[0]), args[1]
			if err := registry.CheckRouteHost(d.Val()); err != nil {
				return d.Errf("%v", err)
			}
			if _, ok := h.Routes[host]; ok {
				return d.Errf("duplicate route for host '%s'", d.Val())
			}
			d.NextArg()
			if _, err := h.parseUpstreamArg(d); err != nil {
				return err
			}
			if h.Routes == nil {
				h.Routes = make(map[string]string)
			}
			h.Routes[host] = upstream

		case "upstream":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.ArgErr()
			}
			name, rawURL := args[0], args[1]
			canonical, err := registry.ParseOverride(name, rawURL)
			if err != nil {
				return d.Errf("%v", err)
			}
			if _, ok := h.Upstreams[canonical]; ok {
				return d.Errf("upstream '%s' already specified", name)
			}
			if h.Upstreams == nil {
				h.Upstreams = make(map[string]string)
			}
			h.Upstreams[canonical] = rawURL

		case "fallback":
			if _, err := singleArg(d, h.Fallback != ""); err != nil {
				return err
			}
			if _, err := h.parseUpstreamArg(d); err != nil {
				return err
			}
			h.Fallback = d.Val()

		case "credentials":
			var cred Credential
			var name string // canonical name of the upstream
			switch d.CountRemainingArgs() {
			case 2:
				up, err := h.credentialsUpstream("")
				if err != nil {
					return d.Errf("%v: write credentials <upstream> <username> <secret>", err)
				}
				name = up.Name
			case 3:
				d.NextArg()
				up, err := h.parseUpstreamArg(d)
				if err != nil {
					return err
				}
				cred.Upstream = d.Val()
				name = up.Name
			default:
				d.RemainingArgs()
				return d.ArgErr()
			}
			d.AllArgs(&cred.Username, &cred.Secret)
			if err := checkCredential(cred, name, credentialsFor); err != nil {
				return d.Errf("%v", err)
			}
			h.Credentials = append(h.Credentials, cred)

		case "auth_key":
			key, err := singleArg(d, h.AuthKey != "")
			if err != nil {
				return err
			}
			if key == "" {
				return d.Errf("auth_key must not be empty")
			}
			h.AuthKey = key

		case "cache":
			if h.Cache != nil {
				return d.Errf("cache already specified")
			}
			cache, err := parseCache(d)
			if err != nil {
				return err
			}
			h.Cache = cache

		case "transport":
			if h.TransportRaw != nil {
				return d.Errf("transport already specified")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			modID := "http.reverse_proxy.transport." + name
			unm, err := caddyfile.UnmarshalModule(d, modID)
			if err != nil {
				return err
			}
			if _, ok := unm.(http.RoundTripper); !ok {
				return d.Errf("module %s (%T) is not a RoundTripper", modID, unm)
			}
			h.TransportRaw = caddyconfig.JSONModuleObject(unm, "protocol", name, nil)

		case "page":
			page, err := parsePage(d, h.Page != nil)
			if err != nil {
				return err
			}
			h.Page = page

		case "users":
			if err := h.parseUsers(d); err != nil {
				return err
			}

		case "allow", "deny":
			if err := h.parseRule(d); err != nil {
				return err
			}

		case "prefetch":
			if err := h.parsePrefetch(d); err != nil {
				return err
			}

		case "{":
			return d.Errf("unexpected block: subdirectives other than users, cache, transport and prefetch take none")
		default:
			return d.Errf("unknown subdirective '%s'", sub)
		}
	}

	if h.Upstream == "" && h.Domain == "" && len(h.Routes) == 0 && h.Fallback == "" {
		d.Reset()
		d.Next() // point the error at the directive
		return d.Errf("docker_proxy needs an upstream: give a default upstream (docker_proxy <upstream>), " +
			"or a domain, route or fallback subdirective")
	}
	if err := h.checkRuleUpstreams(d); err != nil {
		return err
	}
	return h.checkPrefetchRegistries(d)
}

// singleArg reads the one argument of the subdirective in the current
// token, which may be given once: given says whether it was already.
// The cursor is left on the argument, for error messages about it.
func singleArg(d *caddyfile.Dispenser, given bool) (string, error) {
	if given {
		return "", d.Errf("%s already specified", d.Val())
	}
	if len(d.RemainingArgs()) != 1 {
		return "", d.ArgErr()
	}
	return d.Val(), nil
}

// parseUpstreamArg validates the upstream in the current token.
func (h *Handler) parseUpstreamArg(d *caddyfile.Dispenser) (registry.Upstream, error) {
	up, err := registry.ParseUpstream(d.Val(), h.Upstreams)
	if err != nil {
		return up, d.Errf("%v", err)
	}
	return up, nil
}

// parseCache parses "cache off" or "cache [<dir>] { ... }"; the current
// token is "cache".
func parseCache(d *caddyfile.Dispenser) (*CacheConfig, error) {
	cache := new(CacheConfig)
	args := d.RemainingArgs()
	switch {
	case len(args) > 1:
		return nil, d.ArgErr()
	case len(args) == 1 && args[0] == "off":
		// NextBlock also consumes an empty block ("{ }"), leaving the
		// cursor on its closing brace. Either way the cursor is then
		// two tokens past "off", where the error belongs.
		if d.NextBlock(d.Nesting()) || d.Val() != "off" {
			d.Prev()
			d.Prev()
			return nil, d.Errf("cache off takes no block")
		}
		cache.Disabled = true
		return cache, nil
	case len(args) == 1:
		if args[0] == "" {
			return nil, d.Errf("cache directory must not be empty")
		}
		cache.Dir = args[0]
	}

	var haveMaxSize, haveTagTTL, haveNegativeTTL bool
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch sub := d.Val(); sub {
		case "s3":
			if cache.S3 != nil {
				return nil, d.Errf("s3 already specified")
			}
			s3, err := parseS3(d)
			if err != nil {
				return nil, err
			}
			cache.S3 = s3

		case "max_size":
			if _, err := singleArg(d, haveMaxSize); err != nil {
				return nil, err
			}
			haveMaxSize = true
			size, err := humanize.ParseBytes(d.Val())
			if err != nil {
				return nil, d.Errf("invalid max_size '%s': %v", d.Val(), err)
			}
			if size > math.MaxInt64 {
				return nil, d.Errf("invalid max_size '%s': too large", d.Val())
			}
			cache.MaxSize = int64(size)

		case "tag_ttl":
			if _, err := singleArg(d, haveTagTTL); err != nil {
				return nil, err
			}
			haveTagTTL = true
			ttl, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return nil, d.Errf("invalid tag_ttl '%s': %v", d.Val(), err)
			}
			if ttl <= 0 {
				return nil, d.Errf("invalid tag_ttl '%s': must be positive", d.Val())
			}
			cache.TagTTL = caddy.Duration(ttl)

		case "negative_ttl":
			if _, err := singleArg(d, haveNegativeTTL); err != nil {
				return nil, err
			}
			haveNegativeTTL = true
			ttl, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return nil, d.Errf("invalid negative_ttl '%s': %v", d.Val(), err)
			}
			if ttl < 0 {
				return nil, d.Errf("invalid negative_ttl '%s': must not be negative", d.Val())
			}
			cache.NegativeTTL = caddy.Duration(ttl)

		case "{":
			return nil, d.Errf("unexpected block: cache subdirectives take none")
		default:
			return nil, d.Errf("unknown cache subdirective '%s'", sub)
		}
	}
	return cache, nil
}

// parseS3 parses "s3 { ... }"; the current token is "s3".
func parseS3(d *caddyfile.Dispenser) (*S3Config, error) {
	if len(d.RemainingArgs()) != 0 {
		return nil, d.ArgErr()
	}
	s3 := new(S3Config)
	fields := map[string]*string{
		"endpoint":   &s3.Endpoint,
		"bucket":     &s3.Bucket,
		"region":     &s3.Region,
		"prefix":     &s3.Prefix,
		"access_key": &s3.AccessKey,
		"secret_key": &s3.SecretKey,
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		field, ok := fields[sub]
		switch {
		case sub == "{":
			return nil, d.Errf("unexpected block: s3 subdirectives take none")
		case !ok:
			return nil, d.Errf("unknown s3 subdirective '%s'", sub)
		case seen[sub]:
			return nil, d.Errf("%s already specified", sub)
		}
		seen[sub] = true
		if len(d.RemainingArgs()) != 1 {
			return nil, d.ArgErr()
		}
		v := d.Val()
		if v == "" {
			return nil, d.Errf("%s must not be empty", sub)
		}
		if !hasPlaceholder(v) {
			var err error
			switch sub {
			case "endpoint":
				err = s3remote.CheckEndpoint(v)
			case "bucket":
				err = s3remote.CheckBucket(v)
			}
			if err != nil {
				return nil, d.Errf("%v", err)
			}
		}
		*field = v
	}
	if err := s3.check(); err != nil {
		// Something is missing: point at the s3 line.
		backToBlockStart(d)
		return nil, d.Errf("%v", err)
	}
	return s3, nil
}

// backToBlockStart moves the cursor from the closing brace of a block
// back to the token that opened it; elsewhere (no block) it stays.
func backToBlockStart(d *caddyfile.Dispenser) {
	if d.Val() != "}" {
		return
	}
	for depth := 0; ; {
		switch d.Val() {
		case "}":
			depth++
		case "{":
			depth--
		}
		if depth == 0 || !d.Prev() {
			break
		}
	}
	d.Prev()
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
