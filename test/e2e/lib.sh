# shellcheck shell=bash
# Shared helpers of the end-to-end suite: logging, pass/fail accounting,
# background processes recorded by PID, waiting, and a small registry client
# in curl for header checks. Sourced by run.sh and scenarios.sh.

E2E_T0=${E2E_T0:-$(date +%s)}

ts() { printf '%4ss' $(( $(date +%s) - E2E_T0 )); }
log() { printf '%s %s\n' "$(ts)" "$*" >&2; }
section() { printf '\n%s ===== %s =====\n' "$(ts)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# ---- pass/fail accounting ------------------------------------------------
# Results go to $T/results (one line per check: PASS|FAIL <scenario> <name>),
# so that counts survive subshells.

CUR_SCENARIO=${CUR_SCENARIO:-setup}

scenario() {
	CUR_SCENARIO=$1
	section "scenario $1: ${*:2}"
}

# check NAME CMD...: run CMD with its output in the log, record PASS/FAIL.
check() {
	local name=$1
	shift
	log "--- check: $name"
	local rc=0
	"$@" || rc=$?
	if [ "$rc" -eq 0 ]; then
		echo "PASS $CUR_SCENARIO $name" >>"$T/results"
		log "PASS [$CUR_SCENARIO] $name"
	else
		echo "FAIL $CUR_SCENARIO $name (exit $rc)" >>"$T/results"
		log "FAIL [$CUR_SCENARIO] $name (exit $rc)"
	fi
	return 0
}

# note: free-form lines for the report (client versions, digests).
note() {
	echo "NOTE $CUR_SCENARIO $*" >>"$T/results"
	log "note: $*"
}

# expect_eq WHAT WANT GOT
expect_eq() {
	if [ "$2" = "$3" ]; then
		log "  ok: $1 = $3"
		return 0
	fi
	log "  MISMATCH: $1: want '$2', got '$3'"
	return 1
}

# expect_contains WHAT HAYSTACK NEEDLE
expect_contains() {
	case "$2" in
	*"$3"*)
		log "  ok: $1 contains '$3'"
		return 0
		;;
	esac
	log "  MISMATCH: $1: '$2' does not contain '$3'"
	return 1
}

# run CMD...: show and run a command with a timeout, output to the log.
run() {
	log "  \$ $*"
	timeout "${RUN_TIMEOUT:-300}" "$@" 2>&1 | sed 's/^/    | /' >&2
	return "${PIPESTATUS[0]}"
}

# out CMD...: run a command with a timeout and print its stdout (stderr to log).
out() {
	log "  \$ $*"
	timeout "${RUN_TIMEOUT:-300}" "$@" 2> >(sed 's/^/    ! /' >&2)
}

# ---- background processes --------------------------------------------------
# bg NAME LOGFILE CMD...: start CMD in the background, record its PID.

bg() {
	local name=$1 logf=$2
	shift 2
	"$@" >>"$logf" 2>&1 &
	local pid=$!
	echo "$pid $name" >>"$T/pids"
	log "started $name (pid $pid): $*"
	eval "PID_${name//[^a-zA-Z0-9_]/_}=$pid"
}

pid_of() {
	local v="PID_${1//[^a-zA-Z0-9_]/_}"
	echo "${!v:-}"
}

# stop NAME: TERM the process we started under NAME, KILL it after 20 s.
stop() {
	local name=$1 pid
	pid=$(pid_of "$name")
	[ -n "$pid" ] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		local i
		for i in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "$name (pid $pid) did not stop on TERM, sending KILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" 2>/dev/null || true
	log "stopped $name (pid $pid)"
	eval "PID_${name//[^a-zA-Z0-9_]/_}="
}

# stop_all: stop everything in $T/pids, newest first.
stop_all() {
	[ -f "$T/pids" ] || return 0
	local pid name
	while read -r pid name; do
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null || true
		fi
	done < <(tac "$T/pids")
	local i
	for i in $(seq 1 75); do
		local alive=0
		while read -r pid name; do
			kill -0 "$pid" 2>/dev/null && alive=1
		done <"$T/pids"
		[ "$alive" = 0 ] && break
		sleep 0.2
	done
	while read -r pid name; do
		if kill -0 "$pid" 2>/dev/null; then
			log "killing $name (pid $pid)"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done <"$T/pids"
}

# wait_for DESC SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
	local desc=$1 secs=$2
	shift 2
	local end=$(($(date +%s) + secs))
	while ! "$@" >/dev/null 2>&1; do
		if [ "$(date +%s)" -ge "$end" ]; then
			log "timed out after ${secs}s waiting for $desc"
			return 1
		fi
		sleep 0.3
	done
	log "ready: $desc"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# ---- a registry client in curl ---------------------------------------------
# reg_get URL [curl args...]: GET (or HEAD with -I) a registry URL with the
# bearer-token dance: on 401, parse WWW-Authenticate, get a token from the
# realm (with $REG_BASIC as user:pass if set) and retry. Writes headers to
# $T/last.headers and the body to $T/last.body, prints the final status.
reg_get() {
	local url=$1
	shift
	local code
	code=$(curl -sS --cacert "$CA" -o "$T/last.body" -D "$T/last.headers" -w '%{http_code}' "$@" "$url") || true
	if [ "$code" = 401 ]; then
		local wa realm service scope
		wa=$(grep -i '^www-authenticate:' "$T/last.headers" | head -1 | tr -d '\r')
		realm=$(sed -n 's/.*realm="\([^"]*\)".*/\1/p' <<<"$wa")
		service=$(sed -n 's/.*service="\([^"]*\)".*/\1/p' <<<"$wa")
		scope=$(sed -n 's/.*scope="\([^"]*\)".*/\1/p' <<<"$wa")
		echo "$wa" >"$T/last.challenge"
		if [ -n "$realm" ]; then
			local tokargs=(-sS --cacert "$CA" -G "$realm")
			[ -n "$service" ] && tokargs+=(--data-urlencode "service=$service")
			[ -n "$scope" ] && tokargs+=(--data-urlencode "scope=$scope")
			[ -n "${REG_BASIC:-}" ] && tokargs+=(-u "$REG_BASIC")
			local tok
			tok=$(curl "${tokargs[@]}" | jq -r '.token // .access_token // empty') || true
			if [ -n "$tok" ]; then
				code=$(curl -sS --cacert "$CA" -o "$T/last.body" -D "$T/last.headers" -w '%{http_code}' \
					-H "Authorization: Bearer $tok" "$@" "$url") || true
			fi
		fi
	fi
	echo "$code"
}

hdr() { grep -i "^$1:" "$T/last.headers" | tail -1 | sed 's/^[^:]*: *//' | tr -d '\r'; }

# refused CMD...: succeeds only when CMD ran and was refused: it exited with
# a status of its own (1..123) and its output names a registry's refusal
# (REFUSAL_RE, case-insensitive). A failure alone proves nothing: timeout
# cannot run a shell function (127, "No such file or directory"), a missing
# or non-executable program gives 127 or 126, timeout itself 125, a command
# that hangs 124, a signal 128+N, and a client that cannot reach its daemon
# exits 1 without any registry answer. Each of these fails the check.
REFUSAL_RE=${REFUSAL_RE:-'unauthori[sz]ed|denied|forbidden|authentication required|incorrect username or password|(status|code)[: ]+[45][0-9][0-9]|[45][0-9][0-9] (Unauthorized|Forbidden|Not Found|Too Many Requests|Bad Gateway|Service Unavailable|Gateway Timeout)|toomanyrequests|unavailable|manifest unknown|name unknown'}
refused() {
	if declare -F "$1" >/dev/null; then
		log "  CANNOT RUN: $1 is a shell function; timeout runs only programs (use a wrapper script)"
		return 1
	fi
	log "  \$ $*"
	local outf rc=0
	outf=$(mktemp)
	timeout "${RUN_TIMEOUT:-300}" "$@" >"$outf" 2>&1 || rc=$?
	sed 's/^/    | /' "$outf" >&2
	local said
	said=$(cat "$outf")
	rm -f "$outf"
	case $rc in
	0)
		log "  MISMATCH: expected a refusal, got success"
		return 1
		;;
	124)
		log "  TIMED OUT after ${RUN_TIMEOUT:-300}s: no refusal seen"
		return 1
		;;
	125 | 126 | 127)
		log "  CANNOT RUN (exit $rc): $1 did not run, so nothing was refused"
		return 1
		;;
	esac
	if [ "$rc" -gt 128 ]; then
		log "  KILLED by signal $((rc - 128)): no refusal seen"
		return 1
	fi
	if ! grep -Eiq -- "$REFUSAL_RE" <<<"$said"; then
		log "  MISMATCH: exit $rc without a registry refusal in the output (want /$REFUSAL_RE/)"
		return 1
	fi
	log "  ok: refused (exit $rc): $(grep -Eio -m1 -- "$REFUSAL_RE" <<<"$said" | head -1)"
}
