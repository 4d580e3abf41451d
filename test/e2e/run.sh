#!/usr/bin/env bash
# End-to-end suite of docker_proxy: real clients (dockerd, containerd's ctr,
# podman, skopeo, crane) pull over HTTPS through Caddy + docker_proxy, whose
# certificates come from a local ACME CA (pebble), from real registry servers
# (distribution), one behind the suite's own token server.
#
#   test/e2e/run.sh            # everything: installs, builds, scenarios
#
# Environment:
#   E2E_KEEP=1        keep the temp dir (logs, configs) after the run
#   E2E_BIG_MIB=200   size of the large layer
#   E2E_NETNS=1       run in a private network namespace (default when
#                     possible): Caddy then listens on 443/80 there, and image
#                     references carry no port. E2E_NETNS=0: host network,
#                     fresh ports everywhere, references carry Caddy's port.
#   E2E_SKIP_INSTALL=1  fail instead of installing missing tools
#
# Needs root (dockerd, containerd, mount namespaces). Leaves nothing behind:
# everything lives in one temp dir and every process is stopped by its PID.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
export E2E_DIR REPO
export E2E_T0=$(date +%s)
# shellcheck source=lib.sh
. "$E2E_DIR/lib.sh"

# The refusal check must fail when its command cannot run; prove it before
# any scenario relies on it (seconds, no root needed).
bash "$E2E_DIR/selftest.sh" || die "the refusal check's self-test failed"

[ "$(id -u)" = 0 ] || die "the end-to-end suite needs root (dockerd, containerd, unshare)"

GOBIN=$(go env GOBIN)
[ -n "$GOBIN" ] || GOBIN=$(go env GOPATH)/bin
export PATH="$GOBIN:$PATH"

# ---- installs ------------------------------------------------------------

wait_apt() {
	local i
	for i in $(seq 1 600); do
		if ! pgrep -x apt-get >/dev/null && ! pgrep -x apt >/dev/null && ! pgrep -x dpkg >/dev/null; then
			return 0
		fi
		[ "$i" = 1 ] && log "waiting for another apt/dpkg to finish"
		sleep 1
	done
	die "apt/dpkg still busy after 10 minutes"
}

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v podman >/dev/null || need_apt+=(podman)
command -v containerd >/dev/null || need_apt+=(containerd)
command -v docker-compose >/dev/null || need_apt+=(docker-compose) # deploy.sh
command -v ctr >/dev/null || need_apt+=(containerd)
for c in curl jq openssl; do
	command -v $c >/dev/null || need_apt+=("$c")
done
command -v unshare >/dev/null || need_apt+=(util-linux)
command -v chromium >/dev/null || need_apt+=(chromium)      # page.sh
command -v certutil >/dev/null || need_apt+=(libnss3-tools) # page.sh: chromium's trust
command -v timeout >/dev/null || need_apt+=(coreutils)
if [ ${#need_apt[@]} -gt 0 ]; then
	[ "${E2E_SKIP_INSTALL:-}" = 1 ] && die "missing: ${need_apt[*]}"
	section "installing ${need_apt[*]}"
	wait_apt
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	# With their recommended packages, as a user's machine has them (podman
	# with fuse-overlayfs, slirp4netns, uidmap): the set the suite is run
	# with on the development machines.
	apt-get install -y -q "${need_apt[@]}"
fi

go_tool() { # go_tool BINARY PACKAGE@VERSION
	if ! command -v "$1" >/dev/null; then
		[ "${E2E_SKIP_INSTALL:-}" = 1 ] && die "missing: $1"
		log "go install $2"
		go install "$2"
	fi
}
go_tool pebble github.com/letsencrypt/pebble/v2/cmd/pebble@latest
go_tool crane github.com/google/go-containerregistry/cmd/crane@latest
go_tool oras oras.land/oras/cmd/oras@v1.3.6 # failfast.sh
go_tool xcaddy github.com/caddyserver/xcaddy/cmd/xcaddy@latest

# pebble's own HTTPS listener certificate and the CA that signed it come
# from pebble's source tree in the module cache.
PEBBLE_SRC=$(ls -d "$(go env GOMODCACHE)"/github.com/letsencrypt/pebble/v2@*/ 2>/dev/null | sort -V | tail -1)
if [ ! -f "$PEBBLE_SRC/test/certs/pebble.minica.pem" ]; then
	(cd /tmp && go mod download -json github.com/letsencrypt/pebble/v2@latest >/dev/null)
	PEBBLE_SRC=$(ls -d "$(go env GOMODCACHE)"/github.com/letsencrypt/pebble/v2@*/ | sort -V | tail -1)
fi
[ -f "$PEBBLE_SRC/test/certs/pebble.minica.pem" ] || die "pebble's test certificates not found in the module cache"
export PEBBLE_SRC

# ---- temp dir and cleanup ----------------------------------------------------

T=$(mktemp -d /tmp/dockerproxy-e2e.XXXXXX)
export T
: >"$T/results"
: >"$T/pids"
NS_PID=
XCADDY_PID=
CREATED_VLC=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$NS_PID" ] && kill -0 "$NS_PID" 2>/dev/null; then
		kill -TERM "$NS_PID" 2>/dev/null || true
		wait "$NS_PID" 2>/dev/null || true
	fi
	# The xcaddy build is a process group of its own (xcaddy, go, the
	# compilers): stop all of it.
	if [ -n "$XCADDY_PID" ] && kill -0 "$XCADDY_PID" 2>/dev/null; then
		kill -TERM -- "-$XCADDY_PID" 2>/dev/null || true
		wait "$XCADDY_PID" 2>/dev/null || true
	fi
	stop_all # whatever the scenarios left if their script died abruptly
	[ "${CREATED_VLC:-}" = 1 ] && rmdir /var/lib/containers 2>/dev/null
	if [ "${E2E_KEEP:-}" = 1 ]; then
		log "kept $T"
	else
		rm -rf "$T"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- builds ----------------------------------------------------------------

section "build"
mkdir -p "$T/bin"
log "caddy from cmd/caddy"
(cd "$REPO" && go build -o "$T/bin/caddy" ./cmd/caddy) || die "go build ./cmd/caddy failed"
log "suite tools (nested module test/e2e)"
(cd "$E2E_DIR" && go build -o "$T/bin/" ./tools/...) || die "building the suite's tools failed"

CUR_SCENARIO=build
check "cmd/caddy lists http.handlers.docker_proxy" \
	bash -c '"$0" list-modules | grep -qx http.handlers.docker_proxy' "$T/bin/caddy"

# The README's xcaddy line, once per run, in the background while the
# scenarios run (a trimmed, tagged build of all of Caddy takes minutes on a
# small machine). Offline: the module proxy refuses this module's path, and
# GOPROXY=off cannot resolve a fresh module (xcaddy's) whose imports need a
# "latest" lookup (chroma imports github.com/dlclark/regexp2/v2, which Go
# must tell apart from github.com/dlclark/regexp2), so the module cache
# itself serves as the proxy (file://). "go mod download all" fills it.
xcaddy_build() {
	local cv
	cv=$(cd "$REPO" && go list -m -f '{{.Version}}' github.com/caddyserver/caddy/v2) || return 1
	(cd "$REPO" && go mod download all) || log "go mod download all: some modules missing (see above)"
	mkdir -p "$T/xcaddy"
	cd "$T/xcaddy" || return 1
	log "\$ CADDY_VERSION=$cv xcaddy build --output $T/bin/caddy-xcaddy --with github.com/caddy-dockerproxy/dockerproxy=$REPO"
	CADDY_VERSION=$cv GOPROXY="file://$(go env GOMODCACHE)/cache/download" GOSUMDB=off GOFLAGS=-mod=mod \
		xcaddy build --output "$T/bin/caddy-xcaddy" \
		--with "github.com/caddy-dockerproxy/dockerproxy=$REPO"
}
# Its own process group (job control on for this one start), so that
# cleanup stops the go build under it too; not in $T/pids, which the
# scenarios stop when they end, long before a cold build of Caddy is done.
set -m
xcaddy_build >"$T/xcaddy.log" 2>&1 &
XCADDY_PID=$!
set +m
log "started xcaddy build in the background (pid $XCADDY_PID, log $T/xcaddy.log)"

# ---- the scenarios, in a private mount (and network) namespace ----------------

NETNS=${E2E_NETNS:-1}
if [ "$NETNS" = 1 ] && ! unshare -n true 2>/dev/null; then
	log "cannot create a network namespace; using the host network with fresh ports"
	NETNS=0
fi
export NETNS
ns_flags=(-m --propagation private)
[ "$NETNS" = 1 ] && ns_flags+=(-n)

# Only the suite sees these names: /etc/hosts, /etc/docker and
# /etc/containers are bind-mounted from the temp dir inside the namespace.
mkdir -p "$T/etc-docker" "$T/etc-containers" "$T/var-lib-containers"
# skopeo (as root) keeps a blob-info cache in /var/lib/containers/cache
# whatever its flags say: give it the temp dir there too. If the directory
# does not exist, create it for the mount point and remove it afterwards.
if [ ! -e /var/lib/containers ]; then
	mkdir /var/lib/containers
	CREATED_VLC=1
fi
# In a private network namespace the proxy's names point at an address that
# is not loopback (scenarios.sh adds it to lo there): dockerd takes every
# registry on 127.0.0.0/8 for an insecure one, skips verifying its
# certificate and ignores its certs.d directory (the client certificate
# included). On the host network, loopback is all there is.
if [ "$NETNS" = 1 ]; then PROXY_ADDR=10.203.0.1; else PROXY_ADDR=127.0.0.1; fi
export PROXY_ADDR
{
	cat /etc/hosts
	echo "$PROXY_ADDR docker.example.test ghcr.example.test mirror.example.test unknown.example.test private.example.test mtls.example.test"
} >"$T/hosts"
# /run is a fresh tmpfs there: podman and friends keep run-time state in
# /run/containers whatever their flags say.
ns_cmd='mount --bind "$T/hosts" /etc/hosts && mount -t tmpfs -o mode=755 e2e-run /run'
[ -d /etc/docker ] && ns_cmd+=' && mount --bind "$T/etc-docker" /etc/docker'
[ -d /etc/containers ] && ns_cmd+=' && mount --bind "$T/etc-containers" /etc/containers'
ns_cmd+=' && mount --bind "$T/var-lib-containers" /var/lib/containers'
ns_cmd+=' && exec bash "$E2E_DIR/scenarios.sh"'

section "entering namespace (unshare ${ns_flags[*]}), network namespace: $NETNS"
set +e
unshare "${ns_flags[@]}" sh -c "$ns_cmd" &
NS_PID=$!
wait "$NS_PID"
ns_rc=$?
NS_PID=
set -e

# ---- xcaddy -------------------------------------------------------------------

CUR_SCENARIO=build
check_xcaddy() {
	local i rc=0
	for i in $(seq 1 "${E2E_XCADDY_WAIT:-900}"); do
		kill -0 "$XCADDY_PID" 2>/dev/null || break
		[ "$i" = 1 ] && log "waiting for the xcaddy build (pid $XCADDY_PID)"
		sleep 1
	done
	if kill -0 "$XCADDY_PID" 2>/dev/null; then
		log "xcaddy build still running after ${E2E_XCADDY_WAIT:-900}s"
		return 1
	fi
	wait "$XCADDY_PID" || rc=$?
	grep -v '^\s*$' "$T/xcaddy.log" | grep -v 'go: added' | tail -15 | sed 's/^/    | /' >&2
	[ "$rc" = 0 ] || return 1
	local mods
	mods=$("$T/bin/caddy-xcaddy" list-modules) || return 1
	note "xcaddy $(xcaddy version 2>/dev/null | head -1) built caddy $("$T/bin/caddy-xcaddy" version | head -1)"
	expect_contains "list-modules of the xcaddy-built caddy" "$mods" "http.handlers.docker_proxy" || return 1
	if [ -f "$T/caddy/Caddyfile" ]; then
		XDG_DATA_HOME="$T/caddy/data" XDG_CONFIG_HOME="$T/caddy/config" \
			run "$T/bin/caddy-xcaddy" adapt --config "$T/caddy/Caddyfile" >/dev/null || return 1
		log "  ok: the xcaddy-built caddy adapts the suite's Caddyfile"
	fi
}
check "xcaddy build --with github.com/caddy-dockerproxy/dockerproxy=<repo> lists http.handlers.docker_proxy" check_xcaddy

# ---- summary -----------------------------------------------------------------

section "summary (temp dir $T)"
grep '^NOTE ' "$T/results" | sed 's/^NOTE /  /' >&2 || true
echo >&2
grep -E '^(PASS|FAIL) ' "$T/results" | sed 's/^/  /' >&2 || true
passed=$(grep -c '^PASS ' "$T/results" || true)
failed=$(grep -c '^FAIL ' "$T/results" || true)
if [ "$ns_rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
	log "the scenario script exited with $ns_rc"
	failed=$((failed + 1))
fi
log "runtime $(( $(date +%s) - E2E_T0 ))s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
