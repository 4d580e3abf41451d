# shellcheck shell=bash
# The admin API in the end-to-end suite: curl on Caddy's admin endpoint
# lists an image that docker pulled through the proxy, purges it, and
# docker's next pull reaches the upstream again.
#
# Sourced by scenarios.sh, which provides $DOCKER, $DH (the proxy's Docker
# Hub host), $HUB (the hub registry, its log in $T/hub/registry.log),
# $CADDY_ADMIN (Caddy's admin port), $T/crane-upstream (crane's login to
# the hub) and the helpers of lib.sh. Run while the upstreams are up: the
# image is pushed here, and docker's last pull caches it again.

ADMIN_REPO=team/purge

admin_url() { echo "http://127.0.0.1:$CADDY_ADMIN/docker_proxy/$1"; }

# admin_push: team/purge:1 on the hub, team/app:2 with one layer of its
# own: it shares team/app:2's layers, which docker pulled in round 1.
admin_push() {
	mkdir -p "$T/admin"
	head -c 300000 /dev/urandom >"$T/admin/own.bin"
	tar -C "$T/admin" -cf "$T/admin/own.tar" own.bin || return 1
	DOCKER_CONFIG="$T/crane-upstream" run crane append --insecure -b "$HUB/team/app:2" \
		-f "$T/admin/own.tar" -t "$HUB/$ADMIN_REPO:1" || return 1
	ADMIN_DIGEST=$(DOCKER_CONFIG="$T/crane-upstream" crane digest --insecure "$HUB/$ADMIN_REPO:1") || return 1
	local m
	m=$(DOCKER_CONFIG="$T/crane-upstream" crane manifest --insecure "$HUB/$ADMIN_REPO:1") || return 1
	ADMIN_OWN=$(jq -r '.layers[-1].digest' <<<"$m")
	ADMIN_SHARED=$(jq -r '.layers[:-1][].digest' <<<"$m" | sort | tr '\n' ' ')
	ADMIN_SIZE=$(jq '[.config.size] + [.layers[].size] | add' <<<"$m")
	note "$ADMIN_REPO:1 $ADMIN_DIGEST: own layer $ADMIN_OWN, shared with team/app:2: $ADMIN_SHARED"
	[ -n "$ADMIN_SHARED" ] && [ "$ADMIN_OWN" != null ]
}

# admin_upstream_gets: how often the proxy asked the hub for the image's
# manifest (HEAD or GET, by tag or digest) and for its own layer, as the
# hub's access log says.
admin_upstream_gets() {
	local proxy_lines
	proxy_lines=$(grep -E '^[0-9.]+ - .*"(HEAD|GET) /v2/'"$ADMIN_REPO"'/.*"docker_proxy' "$T/hub/registry.log")
	echo "$(grep -c "/v2/$ADMIN_REPO/manifests/" <<<"$proxy_lines") $(grep -c "GET /v2/$ADMIN_REPO/blobs/$ADMIN_OWN " <<<"$proxy_lines")"
}

admin_lists() {
	local body
	body=$(out curl -sS "$(admin_url "images?upstream=docker.io&repository=$ADMIN_REPO")") || return 1
	log "  $(jq -c '.caches[].repositories' <<<"$body")"
	expect_eq "repositories listed" "docker.io $ADMIN_REPO" \
		"$(jq -r '.caches[].repositories[] | "\(.upstream) \(.repository)"' <<<"$body")" || return 1
	expect_eq "tag 1" "$ADMIN_DIGEST" "$(jq -r '.caches[].repositories[].tags[] | select(.tag == "1") | .digest' <<<"$body" | sort -u)" || return 1
	expect_eq "its manifest, whole in the cache" "$ADMIN_DIGEST true $ADMIN_SIZE $ADMIN_SIZE" \
		"$(jq -r '.caches[].repositories[].manifests[] | "\(.digest) \(.cached) \(.size) \(.cached_bytes)"' <<<"$body")"
}

admin_purges() {
	run "$DOCKER" rmi "$DH/$ADMIN_REPO:1" || return 1
	local body code
	code=$(curl -sS -o "$T/admin/purge.json" -w '%{http_code}' -X DELETE "$(admin_url "images/docker.io/$ADMIN_REPO")") || return 1
	body=$(cat "$T/admin/purge.json")
	log "  DELETE -> $code $(jq -c . <<<"$body")"
	expect_eq "status of the purge" 200 "$code" || return 1
	expect_eq "tags removed" 1 "$(jq -r '.caches[].removed.tags | join(" ")' <<<"$body")" || return 1
	expect_eq "manifests removed" "$ADMIN_DIGEST" "$(jq -r '.caches[].removed.manifests | join(" ")' <<<"$body")" || return 1
	expect_contains "blobs removed" "$(jq -r '.caches[].removed.blobs | join(" ")' <<<"$body")" "$ADMIN_OWN" || return 1
	expect_eq "blobs kept (team/app:2 needs them)" "$ADMIN_SHARED" "$(jq -r '.caches[].kept.blobs[]' <<<"$body" | sort | tr '\n' ' ')" || return 1
	body=$(out curl -sS "$(admin_url "images?upstream=docker.io&repository=$ADMIN_REPO")") || return 1
	expect_eq "repositories listed after the purge" 0 "$(jq '[.caches[].repositories[]] | length' <<<"$body")"
}

admin_pull_again() {
	local before after
	before=$(admin_upstream_gets)
	docker_pull_check "$DH/$ADMIN_REPO:1" "$DH/$ADMIN_REPO@$ADMIN_DIGEST" || return 1
	after=$(admin_upstream_gets)
	log "  hub log: manifest GETs and own-layer GETs $before -> $after"
	[ "${after% *}" -gt "${before% *}" ] && [ "${after#* }" -gt "${before#* }" ] || {
		log "  MISMATCH: the pull after the purge did not reach the upstream for the manifest and the layer"
		return 1
	}
}

admin_scenario() {
	scenario "admin" "the admin API: list an image docker pulled, purge it, pull it again from the upstream"
	check "crane pushes $ADMIN_REPO:1 (team/app:2 and a layer of its own)" admin_push
	check "docker pull $DH/$ADMIN_REPO:1" docker_pull_check "$DH/$ADMIN_REPO:1" "$DH/$ADMIN_REPO@${ADMIN_DIGEST:-none}"
	check "GET /docker_proxy/images lists it: tag, digest, size, all cached" admin_lists
	check "DELETE /docker_proxy/images/docker.io/$ADMIN_REPO: its tag, manifest and own layer go, team/app:2's layers stay" admin_purges
	check "docker pull after the purge reaches the upstream again" admin_pull_again
}
