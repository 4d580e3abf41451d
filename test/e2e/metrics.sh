# shellcheck shell=bash
# The plugin's metrics at Caddy's admin endpoint (/metrics) after each
# round: what dockerd, containerd, podman, skopeo and crane pulled,
# counted under the upstream's name; with the upstreams stopped (round 2),
# the proxy's failed attempts to reach them counted as connect_error.
#
# Sourced by scenarios.sh, whose variables (T, CADDY_ADMIN, ROUND) it uses.

# metrics_sum NAME [LABEL=VALUE...]: the sum of the series called NAME at
# the admin endpoint whose labels include every LABEL="VALUE".
metrics_sum() {
	local name=$1
	shift
	curl -sS -m 10 "http://127.0.0.1:$CADDY_ADMIN/metrics" >"$T/metrics.txt" || return 1
	awk -v name="$name" -v want="$*" '
		BEGIN { n = split(want, w, " ") }
		index($0, name "{") == 1 {
			ok = 1
			for (i = 1; i <= n; i++) {
				split(w[i], kv, "=")
				if (index($0, kv[1] "=\"" kv[2] "\"") == 0) ok = 0
			}
			if (ok) s += $NF
		}
		END { printf "%.0f\n", s }' "$T/metrics.txt"
}

# metrics_above WHAT MIN NAME [LABEL=VALUE...]: the sum is above MIN.
metrics_above() {
	local what=$1 min=$2 got
	shift 2
	got=$(metrics_sum "$@") || return 1
	if [ "$got" -gt "$min" ]; then
		log "  ok: $what = $got (> $min)"
		return 0
	fi
	log "  MISMATCH: $what = $got, want more than $min"
	grep "^$1" "$T/metrics.txt" | head -20 | sed 's/^/    | /' >&2
	return 1
}

metrics_upstreams_answered() {
	metrics_above "docker.io 2xx" 0 caddy_docker_proxy_upstream_requests_total upstream=docker.io status=2xx &&
		metrics_above "ghcr.io 2xx" 0 caddy_docker_proxy_upstream_requests_total upstream=ghcr.io status=2xx
}

metrics_scenario() {
	scenario "r$ROUND/metrics" "the plugin's metrics at Caddy's admin endpoint"
	local p=caddy_docker_proxy_
	check "manifests and blobs of docker.io served from the cache" \
		metrics_above "docker.io hits" "${METRICS_HITS:-0}" ${p}responses_total upstream=docker.io cache=hit
	check "bytes sent to clients from the cache" \
		metrics_above "bytes from the cache" "${METRICS_CACHE_BYTES:-0}" ${p}response_bytes_total source=cache
	check "the cache directory's entries" metrics_above "entries" 0 ${p}cache_entries
	if [ "$ROUND" = 1 ]; then
		check "manifests and blobs of docker.io fetched from the upstream" \
			metrics_above "docker.io misses" 0 ${p}responses_total upstream=docker.io cache=miss
		check "upstream requests answered 2xx by docker.io and by ghcr.io" metrics_upstreams_answered
		METRICS_CONNECT_ERRORS=$(metrics_sum ${p}upstream_requests_total status=connect_error)
	else
		check "the stopped upstreams counted as connect_error" \
			metrics_above "connect_error" "${METRICS_CONNECT_ERRORS:-0}" ${p}upstream_requests_total status=connect_error
	fi
	METRICS_HITS=$(metrics_sum ${p}responses_total upstream=docker.io cache=hit)
	METRICS_CACHE_BYTES=$(metrics_sum ${p}response_bytes_total source=cache)
}
