// Package netguard keeps an upstream from sending the proxy to internal
// addresses. An upstream on the public internet that redirects a request,
// or names a token realm, on a loopback, private or link-local address
// would otherwise have the proxy fetch from a service only the proxy can
// reach and hand its answer to the client.
//
// The rule is a Policy carried by a request's context: requests to the
// upstream's own host (Home) are never refused; any other host is refused
// when it is, or resolves to, an internal address, unless the policy allows
// internal addresses (the upstream itself is on one: a private registry,
// or a test). Requests whose context carries no policy are not checked.
//
// Two checks apply the rule. Transport resolves the request's host before
// sending it, which covers IP literals, names that resolve to internal
// addresses and pooled connections. Dial checks the address a new
// connection actually reached, which covers a name that resolved to a
// public address for the first check and to an internal one for the dial.
package netguard
