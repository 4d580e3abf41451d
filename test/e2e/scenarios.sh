#!/usr/bin/env bash
# The scenarios of the end-to-end suite. run.sh starts this script inside a
# private mount namespace (and, by default, network namespace) in which
# /etc/hosts, /etc/docker and /etc/containers are the suite's own. Do not run
# it directly: use test/e2e/run.sh.
set -uo pipefail

[ -n "${T:-}" ] && [ -d "$T" ] || { echo "run test/e2e/run.sh, not this script" >&2; exit 2; }
# shellcheck source=lib.sh
. "$E2E_DIR/lib.sh"
export PATH="$T/bin:$PATH"

on_exit() {
	local rc=$?
	trap - EXIT INT TERM
	section "stopping everything this run started"
	stop_all
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

CUR_SCENARIO=setup
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(command -v docker)
BIG_MIB=${E2E_BIG_MIB:-200}

# ---- network and ports -------------------------------------------------------

if [ "$NETNS" = 1 ]; then
	ip link set lo up || die "cannot bring up lo in the network namespace"
	ip addr add "$PROXY_ADDR/32" dev lo || die "cannot add $PROXY_ADDR to lo in the network namespace"
fi
mapfile -t P < <(freeports 9) || die "freeports"
PEBBLE_PORT=${P[0]} PEBBLE_MGMT=${P[1]} TOKEN_PORT=${P[2]} HUB_PORT=${P[3]} GHCR_PORT=${P[4]}
CADDY_ADMIN=${P[5]}
if [ "$NETNS" = 1 ]; then
	# A private network namespace: the standard ports are ours alone.
	HTTPS_PORT=443 HTTP_PORT=80 PSUF=
else
	HTTPS_PORT=${P[6]} HTTP_PORT=${P[7]} PSUF=":${P[6]}"
fi
DH=docker.example.test$PSUF
GH=ghcr.example.test$PSUF
MH=mirror.example.test$PSUF
UH=unknown.example.test$PSUF
HUB=127.0.0.1:$HUB_PORT
GHCR=127.0.0.1:$GHCR_PORT
log "ports: pebble $PEBBLE_PORT/$PEBBLE_MGMT, token $TOKEN_PORT, hub $HUB_PORT, ghcr $GHCR_PORT, caddy https $HTTPS_PORT http $HTTP_PORT admin $CADDY_ADMIN"
note "hosts: $DH $GH $MH $UH; upstreams hub=$HUB (token auth) ghcr=$GHCR (anonymous)"

ADMIN_CRED=admin:admin-secret
USER_NAME=e2euser
USER_PASS=e2e-secret-pass

# ---- pebble ------------------------------------------------------------------

start_pebble() {
	mkdir -p "$T/pebble" "$T/pki"
	cp "$PEBBLE_SRC/test/certs/pebble.minica.pem" "$T/pki/pebble.minica.pem"
	cat >"$T/pebble/config.json" <<EOF
{
  "pebble": {
    "listenAddress": "127.0.0.1:$PEBBLE_PORT",
    "managementListenAddress": "127.0.0.1:$PEBBLE_MGMT",
    "certificate": "$PEBBLE_SRC/test/certs/localhost/cert.pem",
    "privateKey": "$PEBBLE_SRC/test/certs/localhost/key.pem",
    "httpPort": $HTTP_PORT,
    "tlsPort": $HTTPS_PORT,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
  }
}
EOF
	# Real HTTP-01/TLS-ALPN-01 validation against Caddy: pebble resolves
	# the names through the namespace's /etc/hosts. No sleeps, no random
	# nonce rejections (they only slow the run down).
	PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=100 \
		bg pebble "$T/pebble/pebble.log" pebble -config "$T/pebble/config.json" || return 1
	wait_for "pebble" 30 curl -sf --cacert "$T/pki/pebble.minica.pem" "https://127.0.0.1:$PEBBLE_PORT/dir" || return 1
	# The issuing root changes at every start of pebble.
	curl -sSf --cacert "$T/pki/pebble.minica.pem" -o "$T/pki/root.pem" "https://127.0.0.1:$PEBBLE_MGMT/roots/0" || return 1
	openssl x509 -in "$T/pki/root.pem" -noout -subject -fingerprint -sha256 >&2
	# Certificate dirs for the clients: the pebble root and nothing else.
	mkdir -p "$T/pki/certdir" "$T/pki/empty"
	cp "$T/pki/root.pem" "$T/pki/certdir/ca.crt"
	: >"$T/pki/empty.pem"
}
check "pebble (ACME CA) is up and its issuing root is read from the management port" start_pebble
CA=$T/pki/root.pem
export CA
[ -s "$CA" ] || die "no pebble root"

# ---- token server and registries -------------------------------------------------

start_upstreams() {
	mkdir -p "$T/token" "$T/hub" "$T/ghcr"
	tokenserver -gen -key "$T/token/key.pem" -cert "$T/token/cert.pem" || return 1
	bg tokenserver "$T/token/token.log" tokenserver -addr "127.0.0.1:$TOKEN_PORT" \
		-key "$T/token/key.pem" -cert "$T/token/cert.pem" \
		-issuer e2e-token-issuer -service e2e-registry \
		-admin "$ADMIN_CRED" -user "$USER_NAME:$USER_PASS" -private private/ || return 1
	# hub: Docker-Hub-like, token auth; ghcr: anonymous.
	local name port
	for name in hub ghcr; do
		port=$HUB_PORT
		[ $name = ghcr ] && port=$GHCR_PORT
		cat >"$T/$name/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $T/$name/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: e2e-$name-$RANDOM$RANDOM
EOF
		if [ $name = hub ]; then
			cat >>"$T/$name/config.yml" <<EOF
auth:
  token:
    realm: http://localhost:$TOKEN_PORT/token
    service: e2e-registry
    issuer: e2e-token-issuer
    rootcertbundle: $T/token/cert.pem
EOF
		fi
		bg "registry_$name" "$T/$name/registry.log" docker-registry serve "$T/$name/config.yml" || return 1
	done
	wait_for "token server" 20 port_open 127.0.0.1 "$TOKEN_PORT" || return 1
	wait_for "registry hub" 20 port_open 127.0.0.1 "$HUB_PORT" || return 1
	wait_for "registry ghcr" 20 port_open 127.0.0.1 "$GHCR_PORT" || return 1
	note "upstream registry: $(docker-registry --version 2>&1 | head -1)"
	# The hub answers 401 with the token realm, the token server hands out
	# a token that the hub accepts.
	local wa code
	wa=$(curl -sS -o /dev/null -D - "http://$HUB/v2/" | grep -i '^www-authenticate' | tr -d '\r')
	expect_contains "hub 401 challenge" "$wa" "realm=\"http://localhost:$TOKEN_PORT/token\"" || return 1
	local tok
	tok=$(curl -sSf "http://127.0.0.1:$TOKEN_PORT/token?service=e2e-registry" | jq -r .token) || return 1
	code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "http://$HUB/v2/")
	expect_eq "hub /v2/ with a token" 200 "$code"
}
check "token server + two distribution registries (hub: token auth, ghcr: anonymous)" start_upstreams

# ---- images ----------------------------------------------------------------------

declare -A EXP
push_images() {
	mkdir -p "$T/mkimages"
	run mkimages -hub "$HUB" -hub-user "$ADMIN_CRED" -ghcr "$GHCR" -big-mib "$BIG_MIB" \
		-work "$T/mkimages" -out "$T/expected.json" || return 1
	rm -rf "$T/mkimages"
	local k v
	while read -r k v; do EXP[$k]=$v; done < <(jq -r 'to_entries[] | "\(.key) \(.value)"' "$T/expected.json")
	# Cross-check with crane straight from the upstream registries.
	mkdir -p "$T/crane-upstream"
	printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$HUB" "$(printf %s "$ADMIN_CRED" | base64 -w0)" \
		>"$T/crane-upstream/config.json"
	local ref host got rc=0
	for k in "${!EXP[@]}"; do
		case "$k" in *@*) continue ;; esac
		host=$HUB
		case "$k" in org/*) host=$GHCR ;; esac
		got=$(DOCKER_CONFIG="$T/crane-upstream" crane digest --insecure "$host/$k") || { rc=1; continue; }
		expect_eq "crane digest $host/$k (upstream)" "${EXP[$k]}" "$got" || rc=1
	done
	return $rc
}
check "mkimages pushes the test images (multi-layer, amd64+arm64 indexes, a ${BIG_MIB} MiB layer)" push_images
for k in $(printf '%s\n' "${!EXP[@]}" | sort); do note "upstream digest $k ${EXP[$k]}"; done
[ -n "${EXP[team/app:1]:-}" ] || die "no test images"

# Digest of the large layer, for the blob checks.
BIG_LAYER=$(DOCKER_CONFIG="$T/crane-upstream" crane manifest --insecure "$HUB/team/big:1" |
	jq -r '.layers | max_by(.size) | .digest')
BIG_SIZE=$(DOCKER_CONFIG="$T/crane-upstream" crane manifest --insecure "$HUB/team/big:1" |
	jq -r '.layers | max_by(.size) | .size')
note "large layer of team/big:1: $BIG_LAYER ($BIG_SIZE bytes)"

# ---- caddy -----------------------------------------------------------------------

# Who may use the proxy: the gated sites' setup and scenarios.
# shellcheck source=access.sh
. "$E2E_DIR/access.sh"
check "a proxy account's hash and a client CA for the gated sites" access_setup
# Prefetch: a block in the main site, s8_prefetch each round.
. "$E2E_DIR/prefetch.sh"

start_caddy() {
	mkdir -p "$T/caddy/data" "$T/caddy/config" "$T/cache"
	cat >"$T/caddy/Caddyfile" <<EOF
{
	skip_install_trust
	email e2e@example.test
	admin 127.0.0.1:$CADDY_ADMIN
	http_port $HTTP_PORT
	https_port $HTTPS_PORT
	log {
		output file $T/caddy/caddy.log
		level DEBUG
	}
}

docker.example.test$PSUF, ghcr.example.test$PSUF, mirror.example.test$PSUF, unknown.example.test$PSUF {
	tls {
		issuer acme {
			dir https://127.0.0.1:$PEBBLE_PORT/dir
			trusted_roots $T/pki/pebble.minica.pem
		}
	}
	log {
		output file $T/caddy/access.log
	}
	docker_proxy {
		domain example.test
		upstream docker.io http://$HUB
		upstream ghcr.io http://$GHCR
		route mirror.example.test docker.io
		cache $T/cache {
			tag_ttl 1m
		}
		$(prefetch_block)
	}
}

$(access_sites)
EOF
	XDG_DATA_HOME="$T/caddy/data" XDG_CONFIG_HOME="$T/caddy/config" \
		bg caddy "$T/caddy/stdout.log" caddy run --config "$T/caddy/Caddyfile" --adapter caddyfile || return 1
	note "caddy: $(caddy version | head -1)"
	local h
	for h in docker ghcr mirror unknown; do
		if ! wait_for "certificate for $h.example.test" 90 \
			curl -sS -o /dev/null --cacert "$CA" "https://$h.example.test$PSUF/v2/"; then
			tail -30 "$T/caddy/stdout.log" "$T/caddy/caddy.log" | sed 's/^/    | /' >&2
			return 1
		fi
	done
	access_wait_certs || return 1
	# Issued by pebble's CA through ACME (not Caddy's internal CA).
	local issuer
	issuer=$(echo | openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername docker.example.test 2>/dev/null |
		openssl x509 -noout -issuer)
	log "  docker.example.test certificate $issuer"
	expect_contains "certificate issuer" "$issuer" "Pebble" || return 1
	grep -c '"challenge_type":"http-01"' "$T/caddy/caddy.log" | sed 's/^/  http-01 challenge log lines: /' >&2 || true
}
check "caddy obtains certificates from pebble via ACME for the proxy host names" start_caddy
kill -0 "$(pid_of caddy)" 2>/dev/null || die "caddy is not running; see $T/caddy/stdout.log"

# The page browsers get; its registry-mirrors line configures dockerd below.
. "$E2E_DIR/page.sh"
page_scenario_browser

# ---- containerd and dockerd ----
# One containerd for ctr (namespace e2e) and dockerd (namespace moby), with
# isolated content: dockerd 20.10 caches manifests in containerd's content
# store, and with the default "shared" policy ctr would find those blobs
# instead of fetching them through the proxy.----------------------------------------------------

CTRD_SOCK=$T/containerd/containerd.sock
# Client wrappers as scripts (so that timeout can run them).
wrapper() { # NAME BODY
	printf '#!/bin/sh\n%s\n' "$2" >"$T/bin/$1"
	chmod +x "$T/bin/$1"
}
wrapper ctr_ "exec ctr --address '$CTRD_SOCK' --namespace e2e \"\$@\""
start_containerd() {
	mkdir -p "$T/containerd"
	cat >"$T/containerd/config.toml" <<EOF
version = 2
root = "$T/containerd/root"
state = "$T/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = "$T/containerd/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$T/containerd/opt"
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
EOF
	bg containerd "$T/containerd/containerd.log" containerd --config "$T/containerd/config.toml" || return 1
	wait_for "containerd" 30 ctr --address "$CTRD_SOCK" version || return 1
	note "containerd: $(ctr --address "$CTRD_SOCK" version | grep -m1 Version | tr -s ' ')"
}
check "containerd starts" start_containerd

DOCKER_SOCK=$T/docker/docker.sock
export DOCKER_HOST=unix://$DOCKER_SOCK
export DOCKER_CONFIG=$T/docker-client
start_dockerd() {
	mkdir -p "$T/docker" "$DOCKER_CONFIG" "/etc/docker/certs.d/$DH"
	echo "{}" >"$DOCKER_CONFIG/config.json"
	# dockerd reads /etc/docker/certs.d (the suite's own in this namespace):
	# the pebble root is the only CA it gets for the proxy.
	cp "$CA" "/etc/docker/certs.d/$DH/ca.crt"
	mkdir -p "/etc/docker/certs.d/$GH"
	cp "$CA" "/etc/docker/certs.d/$GH/ca.crt"
	cat >"$T/docker/daemon.json" <<EOF
{
  "registry-mirrors": ["https://$DH"]
}
EOF
	page_daemon_json "$T/docker/daemon.json"
	# No system roots for dockerd: only certs.d can make the proxy trusted.
	SSL_CERT_FILE="$T/pki/empty.pem" SSL_CERT_DIR="$T/pki/empty" \
		bg dockerd "$T/docker/dockerd.log" dockerd \
		--config-file "$T/docker/daemon.json" \
		--storage-driver=vfs --iptables=false --ip6tables=false --bridge=none --ip-masq=false \
		--data-root "$T/docker/data" --exec-root "$T/docker/exec" --pidfile "$T/docker/dockerd.pid" \
		--containerd "$CTRD_SOCK" -H "unix://$DOCKER_SOCK" || return 1
	wait_for "dockerd" 60 "$DOCKER" info || { tail -20 "$T/docker/dockerd.log" >&2; return 1; }
	note "docker: client $("$DOCKER" version -f '{{.Client.Version}}'), dockerd $("$DOCKER" version -f '{{.Server.Version}}')"
	"$DOCKER" info -f 'mirrors: {{json .RegistryConfig.Mirrors}}' >&2
}
check "dockerd starts with registry-mirrors [https://$DH]" start_dockerd

# dockerd takes a registry on 127.0.0.0/8 for an insecure one and skips
# verifying its certificate: the proxy's names point elsewhere in the
# network namespace (PROXY_ADDR in run.sh), and this shows that dockerd
# verifies them. Without the CA in certs.d the pull fails on the
# certificate (and never reaches the proxy's handler).
docker_verifies_the_certificate() {
	local out rc=1
	mv "/etc/docker/certs.d/$DH/ca.crt" "$T/docker/ca.crt.aside" || return 1
	out=$("$DOCKER" pull "$DH/team/app:1" 2>&1) || rc=0
	mv "$T/docker/ca.crt.aside" "/etc/docker/certs.d/$DH/ca.crt" || return 1
	log "  without the CA in certs.d: $out"
	[ "$rc" = 0 ] && [[ "$out" == *"certificate"* ]]
}
if [ "$NETNS" = 1 ]; then
	check "dockerd verifies the proxy's certificate (refused without the CA)" docker_verifies_the_certificate
fi

# ---- client configuration -------------------------------------------------------------

# containerd: hosts.toml mirrors (containerd adds ?ns=<registry>).
mkdir -p "$T/ctr-hosts/docker.io" "$T/ctr-hosts/ghcr.io" "$T/ctr-hosts/$GH"
for r in docker.io ghcr.io; do
	cat >"$T/ctr-hosts/$r/hosts.toml" <<EOF
[host."https://$MH"]
  capabilities = ["pull", "resolve"]
  ca = "$CA"
EOF
done
cat >"$T/ctr-hosts/$GH/hosts.toml" <<EOF
server = "https://$GH"

[host."https://$GH"]
  capabilities = ["pull", "resolve"]
  ca = "$CA"
EOF

# podman/skopeo: registries.conf mirrors, storage, engine dirs, policy.
mkdir -p "$T/podman"
cat >"$T/podman/registries.conf" <<EOF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "$DH"

[[registry]]
prefix = "ghcr.io"
location = "ghcr.io"
[[registry.mirror]]
location = "$GH"
EOF
cat >"$T/podman/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "$T/podman/run"
graphroot = "$T/podman/root"
EOF
cat >"$T/podman/containers.conf" <<EOF
[engine]
tmp_dir = "$T/podman/tmp"
static_dir = "$T/podman/root/libpod"
volume_path = "$T/podman/root/volumes"
events_logger = "file"
events_logfile_path = "$T/podman/events.log"
cgroup_manager = "cgroupfs"
[network]
network_config_dir = "$T/podman/networks"
EOF
cat >"$T/podman/policy.json" <<EOF
{"default": [{"type": "insecureAcceptAnything"}]}
EOF
export CONTAINERS_REGISTRIES_CONF=$T/podman/registries.conf
export CONTAINERS_STORAGE_CONF=$T/podman/storage.conf
export CONTAINERS_CONF=$T/podman/containers.conf
echo '{}' >"$T/podman/auth.json"
export REGISTRY_AUTH_FILE=$T/podman/auth.json
wrapper podman_ "DOCKER_CONFIG= exec podman --root '$T/podman/root' --runroot '$T/podman/run' --storage-driver vfs \"\$@\""

# crane/ggcr: the system pool is the pebble root alone.
wrapper crane_ "SSL_CERT_FILE='$CA' SSL_CERT_DIR='$T/pki/empty' DOCKER_CONFIG='$T/crane-client' exec crane \"\$@\""
mkdir -p "$T/crane-client"
echo '{}' >"$T/crane-client/config.json"

# ---- helpers for the checks --------------------------------------------------------

# The proxy's access log has a request for HOST whose URI contains PART.
proxy_saw() {
	local host=$1 part=$2
	if jq -c --arg h "$host" --arg p "$part" \
		'select((.request.host|split(":")[0]) == $h and (.request.uri|contains($p))) | [.request.method, .request.host, .request.uri, .status]' \
		"$T/caddy/access.log" 2>/dev/null | tail -3 | grep -q .; then
		log "  ok: the proxy served $host ...$part"
		return 0
	fi
	log "  MISMATCH: no request for $host with '$part' in the proxy's access log"
	return 1
}

docker_repodigests() { "$DOCKER" image inspect -f '{{range .RepoDigests}}{{.}} {{end}}' "$1"; }

# docker_pull_check REF EXPECTED-REPODIGEST-SUBSTRING
docker_pull_check() {
	run "$DOCKER" pull "$1" || return 1
	local rd
	rd=$(docker_repodigests "$1") || return 1
	note "docker pull $1 -> RepoDigests $rd"
	expect_contains "RepoDigests of $1" "$rd" "$2"
}

# ctr image digest
ctr_digest() { ctr_ images ls | awk -v r="$1" '$1 == r { print $3 }'; }

# ctr_pull_check REF EXPECTED [ctr pull flags...]
ctr_pull_check() {
	local ref=$1 want=$2
	shift 2
	run ctr_ images pull --hosts-dir "$T/ctr-hosts" --snapshotter native "$@" "$ref" || return 1
	local got
	got=$(ctr_digest "$ref")
	note "ctr pull $* $ref -> $got"
	expect_eq "ctr image digest of $ref" "$want" "$got"
}

# ctr_pull_has REF WANT "CONTENT-DIGESTS" [flags]
ctr_pull_has() {
	local ref=$1 want=$2 has=$3 d
	shift 3
	ctr_pull_check "$ref" "$want" "$@" || return 1
	for d in $has; do
		ctr_has_content "$d" || return 1
	done
}

# ctr_has_content DIGEST: the pull fetched DIGEST. containerd lists it in
# its content store; once in a while (seen once in round 1, with dockerd on
# the same containerd) a platform manifest the pull had fetched was not
# listed right after. Then the proxy's access log must show it served the
# digest to containerd, and the note says so.
ctr_has_content() {
	local i
	for i in 1 2 3 4 5; do
		if ctr_ content ls -q | grep -qx "$1"; then
			log "  ok: containerd content store has $1"
			return 0
		fi
		sleep 1
	done
	if jq -e --arg d "$1" 'select((.request.uri|contains($d)) and .status == 200 and (.request.headers["User-Agent"][0] // "" | test("containerd")))' \
		"$T/caddy/access.log" >/dev/null 2>&1; then
		note "containerd's content store does not list $1, which the proxy served to containerd (200)"
		return 0
	fi
	log "  MISMATCH: containerd content store lacks $1, and the proxy did not serve it to containerd"
	return 1
}

podman_pull_check() {
	run podman_ pull --cert-dir "$T/pki/certdir" --signature-policy "$T/podman/policy.json" "$1" || return 1
	local rd
	rd=$(podman_ image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' "$1") || return 1
	note "podman pull $1 -> RepoDigests $rd"
	expect_contains "RepoDigests of $1" "$rd" "$2"
}

sha256_of() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }

# Cache-Status of a GET through the proxy.
# cache_status_check ROUND URL-PATH-ON-DH ACCEPT
cache_status_is_hit() {
	local url=$1 accept=$2 code cs
	if [ "${3:-}" = twice ]; then
		code=$(reg_get "$url" -H "Accept: $accept")
		log "  first GET $url -> $code, Cache-Status: $(hdr Cache-Status)"
		note "first GET $url -> $code Cache-Status: $(hdr Cache-Status)"
	fi
	code=$(reg_get "$url" -H "Accept: $accept")
	cs=$(hdr Cache-Status)
	log "  GET $url -> $code, Cache-Status: ${cs:-<none>}, Content-Length: $(hdr Content-Length)"
	note "GET $url -> $code Cache-Status: ${cs:-<none>}"
	expect_eq "status of $url" 200 "$code" || { head -c 300 "$T/last.body" >&2; echo >&2; return 1; }
	# A tag older than tag_ttl with the upstream down is served stale
	# (stale-if-error), which is just as much "from the cache".
	if [ "$ROUND" = 2 ] && [ "${3:-}" = twice ]; then
		case "$cs" in *stale*) log "  ok: Cache-Status says stale (tag older than tag_ttl, upstream down)"; return 0 ;; esac
	fi
	expect_contains "Cache-Status of $url" "$cs" "hit"
}

MT_ANY='application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'

# ---- scenarios -----------------------------------------------------------------

# 1. dockerd with registry-mirrors, and a pull from the proxy host name.
s1_docker() {
	scenario "r$ROUND/1-docker" "dockerd (registry-mirrors https://$DH and $DH/...)"
	note "client: docker $("$DOCKER" version -f '{{.Client.Version}} / dockerd {{.Server.Version}}')"
	check "docker pull e2ebusy (docker.io/library/e2ebusy via the mirror)" \
		docker_pull_check e2ebusy "e2ebusy@${EXP[library/e2ebusy:latest]}"
	[ "$ROUND" = 1 ] && check "the mirror got /v2/library/e2ebusy/manifests/latest" \
		proxy_saw docker.example.test /v2/library/e2ebusy/manifests/latest
	check "docker pull team/app:2 (docker.io/team/app via the mirror)" \
		docker_pull_check team/app:2 "team/app@${EXP[team/app:2]}"
	check "docker pull $DH/team/app:1 (amd64 from an amd64+arm64 index)" \
		docker_pull_check "$DH/team/app:1" "$DH/team/app@${EXP[team/app:1]}"
	check "docker pull $DH/team/big:1 (${BIG_MIB} MiB layer)" \
		docker_pull_check "$DH/team/big:1" "$DH/team/big@${EXP[team/big:1]}"
	check "docker pull $GH/org/multi:1 (ghcr-like upstream)" \
		docker_pull_check "$GH/org/multi:1" "$GH/org/multi@${EXP[org/multi:1]}"
}

# 2. containerd's ctr with hosts.toml mirrors for docker.io and ghcr.io.
s2_containerd() {
	scenario "r$ROUND/2-containerd" "ctr images pull --hosts-dir (mirror https://$MH, ?ns=)"
	note "client: $(ctr --version)"
	check "ctr pull docker.io/library/e2ebusy:latest" \
		ctr_pull_check docker.io/library/e2ebusy:latest "${EXP[library/e2ebusy:latest]}"
	check "ctr pull --platform linux/arm64 docker.io/team/app:1 (index + arm64 manifest)" \
		ctr_pull_has docker.io/team/app:1 "${EXP[team/app:1]}" "${EXP[team/app:1@linux/arm64]}" --platform linux/arm64
	check "ctr pull --all-platforms ghcr.io/org/multi:1 (both platforms)" \
		ctr_pull_has ghcr.io/org/multi:1 "${EXP[org/multi:1]}" "${EXP[org/multi:1@linux/amd64]} ${EXP[org/multi:1@linux/arm64]}" --all-platforms
	check "ctr pull ghcr.io/org/tool:1" \
		ctr_pull_check ghcr.io/org/tool:1 "${EXP[org/tool:1]}"
	check "ctr pull docker.io/team/big:1 (${BIG_MIB} MiB layer)" \
		ctr_pull_check docker.io/team/big:1 "${EXP[team/big:1]}"
	check "ctr pull $GH/org/tool:2 (proxy host name directly)" \
		ctr_pull_check "$GH/org/tool:2" "${EXP[org/tool:2]}"
	if [ "$ROUND" = 1 ]; then
		check "the mirror got requests with ?ns=docker.io" proxy_saw mirror.example.test "ns=docker.io"
		check "the mirror got requests with ?ns=ghcr.io" proxy_saw mirror.example.test "ns=ghcr.io"
	fi
}

# 3. podman with registries.conf mirrors; skopeo and crane on the proxy names.
s3_podman() {
	scenario "r$ROUND/3-podman" "podman pull with registries.conf mirrors"
	note "client: $(podman_ --version)"
	check "podman pull e2ebusy (short name -> docker.io mirror $DH)" \
		podman_pull_check e2ebusy "@${EXP[library/e2ebusy:latest]}"
	check "podman pull docker.io/team/app:1 (index via mirror)" \
		podman_pull_check docker.io/team/app:1 "@${EXP[team/app:1]}"
	check "podman pull ghcr.io/org/multi:1 (ghcr mirror $GH)" \
		podman_pull_check ghcr.io/org/multi:1 "@${EXP[org/multi:1]}"
	check "podman pull $DH/team/big:1 (${BIG_MIB} MiB layer)" \
		podman_pull_check "$DH/team/big:1" "@${EXP[team/big:1]}"
}

skopeo_copy_check() { # SRC-REF DIR WANT [flags]
	local src=$1 dir=$2 want=$3
	shift 3
	rm -rf "$dir"
	mkdir -p "$(dirname "$dir")"
	DOCKER_CONFIG= run skopeo --policy "$T/podman/policy.json" copy --src-cert-dir "$T/pki/certdir" "$@" "docker://$src" "dir:$dir" || return 1
	local got
	got=$(sha256_of "$dir/manifest.json")
	note "skopeo copy $* $src -> manifest $got"
	expect_eq "digest of the manifest skopeo copied from $src" "$want" "$got"
}

skopeo_inspect_check() { # REF WANT [--raw]
	local got
	if [ "${3:-}" = --raw ]; then
		out skopeo inspect --raw --cert-dir "$T/pki/certdir" "docker://$1" >"$T/skopeo-raw.json" || return 1
		got=$(sha256_of "$T/skopeo-raw.json")
	else
		got=$(out skopeo inspect --cert-dir "$T/pki/certdir" "docker://$1" | jq -r .Digest) || return 1
	fi
	note "skopeo inspect ${3:-} $1 -> $got"
	expect_eq "digest skopeo inspect reports for $1" "$2" "$got"
}

skopeo_tags_check() { # REPO WANT-JSON
	local got
	got=$(out skopeo list-tags --cert-dir "$T/pki/certdir" "docker://$1" | jq -c '[.Tags[]] | sort') || return 1
	note "skopeo list-tags $1 -> $got"
	expect_eq "tags of $1" "$2" "$got"
}

# skopeo_copy_all_check REF DIR KEY: copy an index with --all to dir: and
# compare each platform's manifest with the upstream's. (skopeo 1.9
# re-serializes the index itself when writing to dir:, even straight from
# distribution, and refuses --preserve-digests for it; the index digest is
# checked with skopeo inspect --raw.)
skopeo_copy_all_check() {
	local src=$1 dir=$2 key=$3 p d got rc=0
	rm -rf "$dir"
	mkdir -p "$(dirname "$dir")"
	run skopeo --policy "$T/podman/policy.json" copy --src-cert-dir "$T/pki/certdir" --all "docker://$src" "dir:$dir" || return 1
	for p in linux/amd64 linux/arm64; do
		d=${EXP[$key@$p]}
		got=$(sha256_of "$dir/${d#sha256:}.manifest.json" 2>/dev/null)
		note "skopeo copy --all $src: $p manifest -> $got"
		expect_eq "$p manifest skopeo copied from $src" "$d" "$got" || rc=1
	done
	return $rc
}

skopeo_copy_big() {
	skopeo_copy_check "$DH/team/big:1" "$T/skopeo/big" "${EXP[team/big:1]}" || return 1
	expect_eq "bytes of the large layer skopeo copied" "$BIG_LAYER" "$(sha256_of "$T/skopeo/big/${BIG_LAYER#sha256:}")"
}

s3_skopeo() {
	scenario "r$ROUND/3-skopeo" "skopeo inspect / list-tags / copy from $DH and $GH"
	note "client: $(skopeo --version)"
	check "skopeo inspect docker://$GH/org/tool:1" skopeo_inspect_check "$GH/org/tool:1" "${EXP[org/tool:1]}"
	check "skopeo inspect --raw docker://$DH/team/app:1 (index bytes)" \
		skopeo_inspect_check "$DH/team/app:1" "${EXP[team/app:1]}" --raw
	check "skopeo list-tags docker://$GH/org/tool = [1 2]" skopeo_tags_check "$GH/org/tool" '["1","2"]'
	check "skopeo list-tags docker://$DH/team/app = [1 2]" skopeo_tags_check "$DH/team/app" '["1","2"]'
	check "skopeo copy --all docker://$DH/team/app:1 (both platforms' manifests)" \
		skopeo_copy_all_check "$DH/team/app:1" "$T/skopeo/app" team/app:1
	check "skopeo copy docker://$DH/team/big:1 (${BIG_MIB} MiB layer)" skopeo_copy_big
	check "skopeo copy --all docker://$GH/org/multi:1 (both platforms' manifests)" \
		skopeo_copy_all_check "$GH/org/multi:1" "$T/skopeo/multi" org/multi:1
	rm -rf "$T/skopeo"
}

crane_digest_check() { # REF WANT
	local got
	got=$(out crane_ digest "$1") || return 1
	note "crane digest $1 -> $got"
	expect_eq "digest crane reports for $1" "$2" "$got"
}

crane_ls_check() { # REPO "WANT TAGS"
	local got
	got=$(out crane_ ls "$1" | sort | xargs) || return 1
	note "crane ls $1 -> $got"
	expect_eq "tags of $1" "$2" "$got"
}

s3_crane() {
	scenario "r$ROUND/3-crane" "crane digest / pull / ls on $DH and $GH"
	note "client: crane $(crane version)"
	check "crane digest $DH/e2ebusy (one-component name, library/ redirect)" \
		crane_digest_check "$DH/e2ebusy" "${EXP[library/e2ebusy:latest]}"
	check "crane ls $DH/library/e2ebusy = [1.0 latest]" crane_ls_check "$DH/library/e2ebusy" "1.0 latest"
	crane_pull_check() { # REF DIR WANT
		rm -rf "$2"
		run crane_ pull --format oci "$1" "$2" || return 1
		local got
		got=$(jq -r '.manifests[0].digest' "$2/index.json")
		note "crane pull --format oci $1 -> $got"
		expect_eq "digest crane pulled from $1" "$3" "$got"
	}
	check "crane pull $GH/org/multi:1 (index, all platforms)" \
		crane_pull_check "$GH/org/multi:1" "$T/crane/multi" "${EXP[org/multi:1]}"
	check "crane pull $DH/team/big:1 (${BIG_MIB} MiB layer)" \
		crane_pull_check "$DH/team/big:1" "$T/crane/big" "${EXP[team/big:1]}"
	check "crane pull $MH/team/app:2 (mirror host, default docker.io)" \
		crane_pull_check "$MH/team/app:2" "$T/crane/app2" "${EXP[team/app:2]}"
	rm -rf "$T/crane"
}

# docker login as a script, so that the refusal check can run it under
# timeout (timeout runs programs, not shell functions); the password comes
# from a file so that it never appears in the log's command lines.
wrapper docker_login_ "exec '$DOCKER' login -u '$USER_NAME' --password-stdin '$DH' <\"\$1\""
docker_login() { # PASSWORD
	printf '%s\n' "$1" >"$T/login.pass"
	run docker_login_ "$T/login.pass"
}

# 4. A private repository: login through the proxy.
s4_private() {
	scenario "r$ROUND/4-private" "docker login $DH, pull private/secret:1, logout; anonymous refused"
	local ref=$DH/private/secret:1
	"$DOCKER" rmi -f "$ref" >/dev/null 2>&1
	check "anonymous docker pull $ref is refused" refused "$DOCKER" pull "$ref"
	check "anonymous crane digest $ref is refused" refused crane_ digest "$ref"
	printf 'wrong\n' >"$T/wrong.pass"
	check "docker login $DH with wrong password fails" refused docker_login_ "$T/wrong.pass"
	if [ "$ROUND" = 1 ]; then
		check "docker login $DH (through the proxy's /v2/auth)" docker_login "$USER_PASS"
		check "docker pull $ref logged in" docker_pull_check "$ref" "$DH/private/secret@${EXP[private/secret:1]}"
	else
		# Upstream (and its token server) down: the proxy cannot verify
		# the credentials; refusing is acceptable if it says so.
		local rc=0
		echo "$USER_PASS" | timeout 60 "$DOCKER" login -u "$USER_NAME" --password-stdin "$DH" >"$T/offline-login.log" 2>&1 || rc=$?
		note "offline docker login $DH: exit $rc: $(tr '\n' ' ' <"$T/offline-login.log" | cut -c1-300)"
		rc=0
		timeout 120 "$DOCKER" pull "$ref" >"$T/offline-private.log" 2>&1 || rc=$?
		note "offline docker pull $ref (private): exit $rc: $(tr '\n' ' ' <"$T/offline-private.log" | cut -c1-300)"
		note "proxy log lines about private/secret: $(grep -h 'private/secret' "$T/caddy/caddy.log" | tail -3 | cut -c1-600 | tr '\n' ' ')"
	fi
	check "docker logout $DH" run "$DOCKER" logout "$DH"
	"$DOCKER" rmi -f "$ref" >/dev/null 2>&1
	check "docker pull $ref after logout is refused" refused "$DOCKER" pull "$ref"
}

# refused_with STATUS CMD...: CMD ran and was refused with the registry
# status STATUS (401 or 404) in what it printed, or, with "any", with some
# registry error. A command that could not run (126, 127) or ran out of
# time (124) was not refused: the check fails.
refused_with() {
	local want=$1 rc=0
	shift
	log "  \$ $*"
	timeout "${RUN_TIMEOUT:-300}" "$@" >"$T/refusal.out" 2>&1 || rc=$?
	head -c 2000 "$T/refusal.out" | sed 's/^/    | /' >&2
	case $rc in
	0)
		log "  MISMATCH: expected a refusal, got success"
		return 1
		;;
	124 | 126 | 127)
		log "  MISMATCH: the command did not run to an answer (exit $rc)"
		return 1
		;;
	esac
	local pattern
	case $want in
	401) pattern='401|UNAUTHORIZED' ;;
	404) pattern='404|NAME_UNKNOWN|MANIFEST_UNKNOWN|BLOB_UNKNOWN' ;;
	*) pattern='[45][0-9][0-9]|UNAUTHORIZED|UNKNOWN|UNAVAILABLE|DENIED' ;;
	esac
	if ! grep -Eq "$pattern" "$T/refusal.out"; then
		log "  MISMATCH: refused (exit $rc), but not with $want"
		return 1
	fi
	log "  ok: refused with $want"
}

# http_refused STATUS URL: an anonymous GET of URL answers STATUS (any 4xx
# or 5xx with "any"), never content.
http_refused() {
	local code
	code=$(curl -sS -o "$T/refusal.body" -w '%{http_code}' --cacert "$CA" "$2") || return 1
	log "  GET $2 -> $code $(head -c 300 "$T/refusal.body")"
	case $1 in
	any) [ "$code" -ge 400 ] ;;
	*) expect_eq "status of GET $2" "$1" "$code" ;;
	esac
}

PRIVATE_LAYER=
# 4b. What a login pulled stays with that login: after 4's logged-in pull
# of private/secret, anonymous clients get none of it on any other host or
# routing form: 401 where the upstream is docker.io, 404 where it is the
# ghcr.io upstream (which does not have it). In round 2 the upstreams are
# down and cannot confirm anyone: any refusal, never content.
s4_private_elsewhere() {
	scenario "r$ROUND/4b-private-elsewhere" "anonymous crane and curl get none of private/secret through any host or routing form"
	local md=${EXP[private/secret:1]}
	if [ -z "$PRIVATE_LAYER" ]; then
		PRIVATE_LAYER=$(DOCKER_CONFIG="$T/crane-upstream" crane manifest --insecure "$HUB/private/secret:1" | jq -r '.layers[0].digest')
		note "private/secret:1 layer $PRIVATE_LAYER"
	fi
	local hub=401 ghcr=404 repo
	[ "$ROUND" = 2 ] && hub=any ghcr=any
	for repo in "$DH/private/secret" "$MH/private/secret" "$MH/docker.io/private/secret" "$GH/docker.io/private/secret"; do
		check "anonymous crane digest $repo:1 is refused ($hub)" refused_with $hub crane_ digest "$repo:1"
		check "anonymous crane manifest $repo@$md is refused ($hub)" refused_with $hub crane_ manifest "$repo@$md"
		check "anonymous crane blob $repo@$PRIVATE_LAYER is refused ($hub)" refused_with $hub crane_ blob "$repo@$PRIVATE_LAYER"
	done
	for repo in "$GH/private/secret" "$MH/ghcr.io/private/secret"; do
		check "anonymous crane manifest $repo@$md is refused ($ghcr)" refused_with $ghcr crane_ manifest "$repo@$md"
		check "anonymous crane blob $repo@$PRIVATE_LAYER is refused ($ghcr)" refused_with $ghcr crane_ blob "$repo@$PRIVATE_LAYER"
	done
	# containerd's ?ns= form, which crane does not speak.
	local path
	for path in "/v2/private/secret/manifests/$md?ns=docker.io" "/v2/private/secret/blobs/$PRIVATE_LAYER?ns=docker.io"; do
		check "anonymous GET https://$GH$path is refused ($hub)" http_refused $hub "https://$GH$path"
	done
}

big_blob_hit() {
	cache_status_is_hit "https://$DH/v2/team/big/blobs/$BIG_LAYER" '*/*' || return 1
	expect_eq "bytes of the large blob" "$BIG_LAYER" "$(sha256_of "$T/last.body")"
}

# Cache-Status on manifests and blobs.
s5_cache_status() {
	scenario "r$ROUND/5-cache-status" "Cache-Status of manifests and blobs (curl --cacert)"
	local idx=${EXP[team/app:1]} amd=${EXP[team/app:1@linux/amd64]}
	check "manifest by digest $DH/v2/team/app/manifests/$amd is a hit" \
		cache_status_is_hit "https://$DH/v2/team/app/manifests/$amd" "$MT_ANY"
	# A tag is fresh for tag_ttl (1m): the second of two GETs in a row is a
	# hit (the first may be forwarded: the proxy may key tags by Accept).
	check "index by tag $DH/v2/team/app/manifests/1 is a hit (second GET; round 2: hit or stale)" \
		cache_status_is_hit "https://$DH/v2/team/app/manifests/1" "$MT_ANY" twice
	check "large blob $DH/v2/team/big/blobs/$BIG_LAYER is a hit (and has the right bytes)" big_blob_hit
	check "manifest by digest $GH/v2/org/multi/manifests/${EXP[org/multi:1]} is a hit" \
		cache_status_is_hit "https://$GH/v2/org/multi/manifests/${EXP[org/multi:1]}" "$MT_ANY"
	check "mirror $MH/v2/org/tool/manifests/1?ns=ghcr.io is a hit (second GET; round 2: hit or stale)" \
		cache_status_is_hit "https://$MH/v2/org/tool/manifests/1?ns=ghcr.io" "$MT_ANY" twice
}

# 6. The seeds' host table (domain example.test) and the unknown host.
s6_seeds() {
	scenario "r$ROUND/6-seeds" "domain example.test: several seed host names in one site, unknown host"
	check "unknown host $UH gets 404 JSON with the routes" unknown_host_check
	check "GET https://$DH/ redirects to /v2/" redirect_check "https://$DH/" "/v2/"
	check "GET https://$DH/v2/e2ebusy/manifests/latest redirects to /v2/library/e2ebusy/manifests/latest" \
		redirect_check "https://$DH/v2/e2ebusy/manifests/latest" "/v2/library/e2ebusy/manifests/latest"
	check "crane digest $DH/team/app:2" crane_digest_check "$DH/team/app:2" "${EXP[team/app:2]}"
	check "crane digest $GH/org/tool:2" crane_digest_check "$GH/org/tool:2" "${EXP[org/tool:2]}"
	check "crane digest $MH/library/e2ebusy:1.0" crane_digest_check "$MH/library/e2ebusy:1.0" "${EXP[library/e2ebusy:1.0]}"
}

unknown_host_check() {
	local code
	code=$(curl -sS --cacert "$CA" -o "$T/unknown.json" -w '%{http_code}' "https://$UH/v2/") || return 1
	log "  GET https://$UH/v2/ -> $code: $(head -c 600 "$T/unknown.json")"
	note "GET https://$UH/v2/ -> $code $(head -c 300 "$T/unknown.json" | tr '\n' ' ')"
	expect_eq "status" 404 "$code" || return 1
	jq -e '.message == "Available registry routes" and (.routes|type == "object")
		and (.routes|has("docker.example.test")) and (.routes|has("ghcr.example.test"))
		and (.routes|has("quay.example.test"))' "$T/unknown.json" >/dev/null
}

redirect_check() { # URL LOCATION-SUFFIX
	local got
	got=$(curl -sS --cacert "$CA" -o /dev/null -w '%{http_code} %{redirect_url}' "$1")
	log "  GET $1 -> $got"
	case "$got" in "301 "*"$2") return 0 ;; esac
	log "  MISMATCH: want 301 to ...$2"
	return 1
}

clear_clients() {
	section "clearing every client's cache"
	"$DOCKER" image ls -q | sort -u | xargs -r "$DOCKER" rmi -f >/dev/null
	local n
	n=$("$DOCKER" image ls -q | wc -l)
	log "docker images left: $n"
	ctr_ images ls -q | xargs -r ctr_ images rm --sync >/dev/null
	ctr_ content ls -q | xargs -r ctr_ content rm >/dev/null 2>&1
	log "containerd images left: $(ctr_ images ls -q | wc -l), content blobs left: $(ctr_ content ls -q | wc -l)"
	podman_ rmi -af >/dev/null 2>&1
	log "podman images left: $(podman_ images -q | wc -l)"
	rm -rf "$T/skopeo" "$T/crane"
	[ "$n" = 0 ] && [ "$(ctr_ content ls -q | wc -l)" = 0 ] && [ "$(podman_ images -q | wc -l)" = 0 ]
}

# shellcheck source=failfast.sh
. "$E2E_DIR/failfast.sh"

round() {
	s1_docker
	s2_containerd
	s3_podman
	s3_skopeo
	s3_crane
	s4_private
	s4_private_elsewhere
	s5_cache_status
	s6_seeds
	s7_access
	s8_prefetch
	s8_failfast
}

page_scenario_pull # dockerd, configured by the page, pulls through it

# The metrics after each round (metrics.sh).
. "$E2E_DIR/metrics.sh"

ROUND=1
section "ROUND 1: upstreams up"
round
metrics_scenario

# deploy/compose/compose.yaml, while the upstreams are up (deploy.sh).
. "$E2E_DIR/deploy.sh"
deploy_compose

# The admin API, while the upstreams are up (admin.sh).
. "$E2E_DIR/admin.sh"
admin_scenario

ROUND=2
scenario "r2/offline" "stop the upstreams (both registries and the token server), clear the clients"
stop registry_hub
stop registry_ghcr
stop tokenserver
check "the upstreams are down" bash -c '! curl -s -m 3 "http://$0/v2/" && ! curl -s -m 3 "http://$1/v2/" && ! curl -s -m 3 "http://127.0.0.1:$2/token"' \
	"$HUB" "$GHCR" "$TOKEN_PORT"
check "every client's cache is empty" clear_clients
section "ROUND 2: upstreams down, everything from the proxy's cache"
round
metrics_scenario

section "proxy logs (errors and warnings)"
jq -c 'select(.level == "error" or .level == "warn") | {ts, logger, msg, error, uri: .request.uri}' "$T/caddy/caddy.log" 2>/dev/null | tail -40 >&2
exit 0
