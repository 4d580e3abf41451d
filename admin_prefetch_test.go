package dockerproxy

import (
	"github.com/caddyserver/caddy/v2"
)

// The admin API's module serves POST /docker_proxy/prefetch among its
// routes. Until a build has that module, this test-only one serves the
// route on Caddy's admin endpoint, so that tests reach it as an operator
// would; once the module exists, it serves the route and this one
// nothing.
func init() { caddy.RegisterModule(prefetchAdminForTests{}) }

type prefetchAdminForTests struct{}

func (prefetchAdminForTests) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.docker_proxy_prefetch_for_tests",
		New: func() caddy.Module { return prefetchAdminForTests{} },
	}
}

func (prefetchAdminForTests) Routes() []caddy.AdminRoute {
	if _, err := caddy.GetModule("admin.api.docker_proxy"); err == nil {
		return nil
	}
	return []caddy.AdminRoute{prefetchAdminRoute()}
}

// PrefetchNow starts the next run of every live prefetch schedule now, as
// if its interval had passed (a run in progress finishes first).
func PrefetchNow() {
	for _, h := range live.all() {
		if h.prefetch == nil {
			continue
		}
		select {
		case h.prefetch.wake <- struct{}{}:
		default:
		}
	}
}
