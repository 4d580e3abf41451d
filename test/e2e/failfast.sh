# shellcheck shell=bash
# When the upstream fails: signatures found offline, and misses answered
# at once.
#
# oras attaches a signature to an image on the ghcr upstream, a
# distribution registry without the referrers API: it says so with a 404
# for /v2/<name>/referrers/<digest>, and oras tags the referrers index
# sha256-<digest> instead. `oras discover` through the proxy gets that 404
# and falls back to the tag, in round 1 from the upstream, in round 2 (the
# upstreams stopped) from what the proxy kept: the 404 of the referrers
# API, the tag, and the 404 of the signature's own sha256-<digest> tag,
# which oras looks up as it recurses.
#
# Sourced by scenarios.sh, whose variables (T, CA, GH, GHCR, ROUND) it uses.

FAILFAST_DIR=$T/failfast
SIG_TYPE=application/vnd.e2e.signature
SIGNED_DIGEST= SIG_DIGEST=

# oras with no credentials of its own (a script: timeout runs it).
wrapper oras_ "exec oras --registry-config '$FAILFAST_DIR/auth.json' \"\$@\""

# failfast_setup: org/signed:1 on the ghcr upstream, a copy of org/tool:1
# (whose tags other scenarios list), with a signature attached.
failfast_setup() {
	mkdir -p "$FAILFAST_DIR" || return 1
	echo '{}' >"$FAILFAST_DIR/auth.json"
	note "oras: $(oras version | head -1)"
	run crane copy --insecure "$GHCR/org/tool:1" "$GHCR/org/signed:1" || return 1
	printf '{"signed-by":"e2e"}\n' >"$FAILFAST_DIR/sig.json"
	(cd "$FAILFAST_DIR" && run oras_ attach --plain-http --artifact-type "$SIG_TYPE" \
		"$GHCR/org/signed:1" sig.json:application/json) || return 1
	SIGNED_DIGEST=$(out crane digest --insecure "$GHCR/org/signed:1") || return 1
	SIG_DIGEST=$(out oras_ discover --plain-http --format json "$GHCR/org/signed:1" |
		jq -r --arg t "$SIG_TYPE" '.referrers[] | select(.artifactType == $t) | .digest')
	note "org/signed:1 $SIGNED_DIGEST, its signature $SIG_DIGEST"
	[ -n "$SIGNED_DIGEST" ] && [ -n "$SIG_DIGEST" ]
}

# oras_discover_check: oras discover through the proxy lists the signature.
oras_discover_check() {
	local got
	got=$(out oras_ discover --ca-file "$CA" --format json "$GH/org/signed:1" |
		jq -r '[.referrers[] | .artifactType + " " + .digest] | join(",")')
	expect_eq "oras discover $GH/org/signed:1" "$SIG_TYPE $SIG_DIGEST" "$got"
}

# referrers_answer_check STATUS CACHE-STATUS-PART: the proxy's answer to
# the referrers request as oras makes it (Accept: an OCI index).
referrers_answer_check() {
	local code
	code=$(curl -sS -o /dev/null -D "$T/last.headers" -w '%{http_code}' --cacert "$CA" \
		-H 'Accept: application/vnd.oci.image.index.v1+json' \
		"https://$GH/v2/org/signed/referrers/$SIGNED_DIGEST") || return 1
	expect_eq "referrers of org/signed:1: status" "$1" "$code" &&
		expect_contains "referrers of org/signed:1: Cache-Status" "$(hdr Cache-Status)" "$2"
}

# fast_miss_check: with the upstreams stopped, a manifest the cache does
# not hold gets 503 with Retry-After at once (the first request may be
# the probe that finds the upstream still down: 502).
fast_miss_check() {
	local url="https://$GH/v2/org/signed/manifests/never-pushed" code took i
	for i in 1 2; do
		read -r code took < <(curl -sS -o /dev/null -D "$T/last.headers" -w '%{http_code} %{time_total}\n' --cacert "$CA" "$url")
		log "  request $i: $code in ${took}s, Cache-Status $(hdr Cache-Status), Retry-After $(hdr Retry-After)"
	done
	note "a miss with the upstream down: $code in ${took}s"
	expect_eq "a miss with the upstream down: status" 503 "$code" || return 1
	[ -n "$(hdr Retry-After)" ] || { log "  MISMATCH: no Retry-After"; return 1; }
}

# signed_pull_check: crane pulls org/signed:1 through the proxy (round 2:
# from its cache), as one pulls an image before checking its signature.
signed_pull_check() {
	rm -rf "$FAILFAST_DIR/pull"
	run crane_ pull --format oci "$GH/org/signed:1" "$FAILFAST_DIR/pull" || return 1
	expect_eq "digest crane pulled from $GH/org/signed:1" "$SIGNED_DIGEST" "$(jq -r '.manifests[0].digest' "$FAILFAST_DIR/pull/index.json")"
}

s8_failfast() {
	scenario "r$ROUND/8-failfast" "oras discover of a signature on distribution (no referrers API) through $GH; a miss with the upstreams down"
	if [ "$ROUND" = 1 ]; then
		check "oras attaches a signature to $GHCR/org/signed:1 (the upstream)" failfast_setup
		check "the proxy relays the upstream's 404 for referrers" referrers_answer_check 404 "fwd-status=404"
	else
		check "the proxy serves the kept 404 for referrers, stale" referrers_answer_check 404 "fwd=stale"
		check "a miss gets 503 with Retry-After at once" fast_miss_check
	fi
	check "crane pull $GH/org/signed:1" signed_pull_check
	check "oras discover $GH/org/signed:1 lists the signature" oras_discover_check
}
