# shellcheck shell=bash
# Prefetch, end to end: the suite's main site has a prefetch block for
# team/prefetched:1, an image no client pulls in round 1, for this
# machine's platform only. Round 1 sees the scheduled run fetch it (Caddy's
# log) while no client asked for it (the access log); round 2, with the
# upstreams stopped, docker pulls it with the right digest, and the
# platform left out is not in the cache.
# Sourced by scenarios.sh, which puts $(prefetch_block) into the main
# site's docker_proxy and runs s8_prefetch each round.

PREFETCH_IMAGE=team/prefetched:1

# prefetch_platform: this machine's platform as the prefetch block names
# it (uname's x86_64 and aarch64 are amd64 and arm64 there).
prefetch_platform() { echo "linux/$(uname -m)"; }

# prefetch_other_platform: the platform of the index that is not this
# machine's (mkimages makes amd64 and arm64).
prefetch_other_platform() {
	case $(uname -m) in
	x86_64 | amd64) echo linux/arm64 ;;
	*) echo linux/amd64 ;;
	esac
}

# prefetch_block: the block for start_caddy. The interval is long: the run
# that counts is the one when the config starts.
prefetch_block() {
	cat <<EOF2
prefetch {
			interval 1h
			images docker.io/$PREFETCH_IMAGE
			platforms $(prefetch_platform)
		}
EOF2
}

# prefetch_done: Caddy's log says the scheduled run fetched the image.
prefetch_done() {
	jq -c --arg img "docker.io/$PREFETCH_IMAGE" \
		'select(.msg == "prefetch: image done" and .image == $img and .status == "fetched")' \
		"$T/caddy/caddy.log" 2>/dev/null | grep -q .
}

prefetch_logged() {
	wait_for "the scheduled prefetch of $PREFETCH_IMAGE" 120 prefetch_done || {
		grep -h 'prefetch' "$T/caddy/caddy.log" | tail -5 | sed 's/^/    | /' >&2
		return 1
	}
	local line
	line=$(jq -c --arg img "docker.io/$PREFETCH_IMAGE" 'select(.msg == "prefetch: image done" and .image == $img) | {image, status, digest, blobs, blobs_fetched, bytes_fetched}' "$T/caddy/caddy.log" | head -1)
	note "scheduled prefetch: $line"
	expect_eq "digest the prefetch resolved" "${EXP[$PREFETCH_IMAGE]}" "$(jq -r .digest <<<"$line")"
}

# no_client_asked: no request for the image reached the proxy's sites, so
# what round 2 pulls is the prefetch's.
no_client_asked() {
	local n
	n=$(jq -c 'select(.request.uri | contains("team/prefetched"))' "$T/caddy/access.log" 2>/dev/null | wc -l)
	expect_eq "requests for team/prefetched in the access log" 0 "$n"
}

s8_prefetch() {
	scenario "r$ROUND/8-prefetch" "a prefetch block pulls $PREFETCH_IMAGE ($(prefetch_platform)) into the cache; docker pulls it with the upstreams down"
	local other=${EXP[$PREFETCH_IMAGE@$(prefetch_other_platform)]}
	if [ "$ROUND" = 1 ]; then
		check "the scheduled prefetch fetched $PREFETCH_IMAGE when Caddy started" prefetch_logged
		check "no client asked the proxy for team/prefetched" no_client_asked
		return
	fi
	check "docker pull $DH/$PREFETCH_IMAGE (prefetched; upstreams down)" \
		docker_pull_check "$DH/$PREFETCH_IMAGE" "$DH/team/prefetched@${EXP[$PREFETCH_IMAGE]}"
	check "the $(prefetch_other_platform) manifest, left out of the prefetch, is not served" \
		refused crane_ manifest "$DH/team/prefetched@$other"
}
