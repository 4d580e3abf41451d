# shellcheck shell=bash
# The deployments of deploy/ in the end-to-end suite: deploy/compose/compose.yaml
# brought up with Debian's docker-compose on the suite's dockerd, with an
# image of the plugin (a static build of cmd/caddy on scratch: no base image
# from a registry), a docker pull through it from the suite's hub registry,
# then brought down with nothing left.
#
# Sourced by scenarios.sh, which provides $DOCKER (with DOCKER_HOST set to
# the suite's dockerd), $HUB (the hub registry), EXP (the pushed digests)
# and the helpers of lib.sh. The compose file is used as it is, the
# upstream and the ports set through its variables. Its container is on
# the host's network (network_mode: host), which the suite's dockerd
# (--bridge=none) allows: there the host is the suite's network namespace.

COMPOSE_PROJECT=dockerproxy-e2e
COMPOSE_IMAGE=docker-proxy-e2e:compose

# compose_ runs docker-compose on the user's compose file with the suite's
# environment: a script, so that run's timeout can run it.
mkdir -p "$T/compose" "$T/bin"
cat >"$T/bin/compose_" <<SCRIPT
#!/bin/sh
exec docker-compose --project-name '$COMPOSE_PROJECT' --env-file '$T/compose/env' \\
	-f '$REPO/deploy/compose/compose.yaml' "\$@"
SCRIPT
chmod +x "$T/bin/compose_"

# deploy_compose_image builds the image: Caddy with the plugin, built
# statically, on scratch.
deploy_compose_image() {
	mkdir -p "$T/compose/image"
	(cd "$REPO" && CGO_ENABLED=0 run go build -o "$T/compose/image/caddy" ./cmd/caddy) || return 1
	cat >"$T/compose/image/Dockerfile" <<'EOF'
FROM scratch
COPY caddy /usr/bin/caddy
ENV XDG_DATA_HOME=/data XDG_CONFIG_HOME=/config
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
EOF
	run "$DOCKER" build -t "$COMPOSE_IMAGE" "$T/compose/image" || return 1
	rm -f "$T/compose/image/caddy"
}

# deploy_compose_up starts the compose file with the suite's upstream as
# Docker Hub, on free ports, and waits until the proxy says its cache is
# open, over TLS from Caddy's local CA (whose root is in the data volume).
deploy_compose_up() {
	local ports
	mapfile -t ports < <(freeports 2) || return 1
	COMPOSE_HTTPS_PORT=${ports[0]}
	cat >"$T/compose/env" <<EOF
DOCKER_PROXY_IMAGE=$COMPOSE_IMAGE
DOCKER_PROXY_DOMAIN=localhost
DOCKER_PROXY_HTTP_PORT=${ports[1]}
DOCKER_PROXY_HTTPS_PORT=$COMPOSE_HTTPS_PORT
DOCKER_PROXY_DOCKER_HUB=http://$HUB
EOF
	run compose_ config -q || return 1
	run compose_ up -d --no-build || return 1
	local root
	root=$("$DOCKER" volume inspect -f '{{.Mountpoint}}' "${COMPOSE_PROJECT}_caddy-data")/caddy/pki/authorities/local/root.crt
	if ! wait_for "the compose proxy's /healthz over TLS" 60 \
		curl -sSf --cacert "$root" "https://localhost:$COMPOSE_HTTPS_PORT/healthz"; then
		compose_ logs --tail 30 >&2
		return 1
	fi
	local health
	health=$(curl -sS --cacert "$root" "https://localhost:$COMPOSE_HTTPS_PORT/healthz") || return 1
	expect_eq "/healthz of the compose proxy" '{"status":"ok","cache":"open"}' "$health"
}

# deploy_compose_pull pulls an image through the compose proxy with docker,
# and checks it came from the suite's upstream through the proxy and into
# the cache volume.
deploy_compose_pull() {
	local ref=localhost:$COMPOSE_HTTPS_PORT/team/app:1
	# Every layer must come through this proxy: empty docker's store of
	# the images that earlier scenarios pulled (round 2 empties it anyway).
	"$DOCKER" image ls -q | sort -u | xargs -r "$DOCKER" rmi -f >/dev/null
	docker_pull_check "$ref" "${EXP[team/app:1]}" || return 1
	local logs
	logs=$(compose_ logs --no-color docker-proxy 2>&1)
	expect_contains "the compose proxy's access log" "$logs" '"uri":"/v2/team/app/manifests/1"' || return 1
	local cache blobs
	cache=$("$DOCKER" volume inspect -f '{{.Mountpoint}}' "${COMPOSE_PROJECT}_cache") || return 1
	blobs=$(find "$cache/blobs" -type f -name '*.json' 2>/dev/null | wc -l)
	log "  cache volume: $blobs entries"
	[ "$blobs" -gt 0 ] || { log "  MISMATCH: nothing cached in the cache volume"; return 1; }
	"$DOCKER" rmi -f "$ref" >/dev/null
}

# deploy_compose_down brings it down with its volumes, and checks that no
# container, volume or network of the project is left, and the port is free.
deploy_compose_down() {
	run compose_ down --volumes --remove-orphans || return 1
	local left
	left=$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT")
	expect_eq "containers of the compose project left" "" "$left" || return 1
	left=$("$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT")
	expect_eq "volumes of the compose project left" "" "$left" || return 1
	left=$("$DOCKER" network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT")
	expect_eq "networks of the compose project left" "" "$left" || return 1
	if port_open 127.0.0.1 "$COMPOSE_HTTPS_PORT"; then
		log "  MISMATCH: port $COMPOSE_HTTPS_PORT still open"
		return 1
	fi
	"$DOCKER" rmi "$COMPOSE_IMAGE" >/dev/null
}

deploy_compose() {
	scenario "deploy/compose" "deploy/compose/compose.yaml with docker-compose: up, docker pull through it, down"
	note "docker-compose: $(docker-compose version --short 2>/dev/null)"
	check "an image of the plugin: a static cmd/caddy on scratch" deploy_compose_image
	check "docker-compose up: the proxy's /healthz says its cache is open" deploy_compose_up
	check "docker pull through the compose proxy from the suite's upstream" deploy_compose_pull
	check "docker-compose down: no container, volume or network left" deploy_compose_down
	# After a failure above, nothing of the project may outlive the scenario.
	compose_ down --volumes --remove-orphans >/dev/null 2>&1 || true
}
