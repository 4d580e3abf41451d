// Package tokenauth is the proxy's authentication: it parses and rewrites
// WWW-Authenticate challenges, obtains and caches upstream tokens, and runs
// the proxy's own token endpoint (/v2/auth), whose tokens are sealed grants
// that carry a client's upstream credentials back to the proxy and nowhere
// else. It knows nothing of Caddy.
package tokenauth
