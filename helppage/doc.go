// Package helppage renders the page a web browser gets at a proxy host's
// address: which registries the host serves and under which names, and the
// client configuration that uses them (Docker's registry-mirrors, a docker
// pull line per registry, containerd's hosts.toml, podman's
// registries.conf, k3s's registries.yaml), with this host's real names
// filled in.
//
// Registry clients never ask for HTML: PrefersHTML tells a browser's
// request from theirs by its Accept header, so that everything but a
// browser keeps the registry's answers. The caller, which knows the routes,
// describes the host in a Site; the package builds the snippets, renders
// the template (html/template: every name is escaped) and serves it
// self-contained under a strict Content-Security-Policy. Nothing in a Site
// should be secret or internal: the page is for anonymous visitors.
package helppage
