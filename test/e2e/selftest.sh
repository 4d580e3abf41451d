#!/usr/bin/env bash
# Self-test of lib.sh's refusal check, run by run.sh before any scenario
# (and on its own: bash test/e2e/selftest.sh, no root needed). A refusal
# check that passes when its command never ran would hide a proxy that lets
# everyone in; this shows that each way of not running fails the check, and
# that every refusal check in scenarios.sh names a program, not a function.
set -uo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$E2E_DIR/lib.sh"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

fails=0
# want_refused OUTCOME DESC CMD...: refused CMD must give OUTCOME (pass|fail).
want_refused() {
	local want=$1 desc=$2 got=fail
	shift 2
	if refused "$@" 2>>"$dir/log"; then
		got=pass
	fi
	if [ "$got" = "$want" ]; then
		printf 'ok   refused %-4s %s\n' "$want" "$desc" >&2
	else
		printf 'FAIL refused %s, want %s: %s\n' "$got" "$want" "$desc" >&2
		fails=$((fails + 1))
	fi
}

script() { # NAME BODY: an executable script in $dir
	printf '#!/bin/sh\n%s\n' "$2" >"$dir/$1"
	chmod +x "$dir/$1"
}
script denied 'echo "Error response from daemon: pull access denied for x, repository does not exist or may require '\''docker login'\'': denied: requested access to the resource is denied" >&2; exit 1'
script login401 'echo "Error response from daemon: login attempt to https://docker.example.test/v2/ failed with status: 401 Unauthorized" >&2; exit 1'
script crane401 'echo "Error: GET https://docker.example.test/v2/private/secret/manifests/1: UNAUTHORIZED: authentication required" >&2; exit 1'
script nodaemon 'echo "Cannot connect to the Docker daemon at unix:///tmp/docker.sock. Is the docker daemon running?" >&2; exit 1'
script ok 'echo "Login Succeeded"; exit 0'
script hangs 'exec sleep 30'
script killed 'kill -KILL $$'
printf '#!/bin/sh\necho unauthorized; exit 1\n' >"$dir/notexec"
a_function() { echo "unauthorized: authentication required"; return 1; }

# Refusals that a registry gives.
want_refused pass "docker pull denied" "$dir/denied"
want_refused pass "docker login 401" "$dir/login401"
want_refused pass "crane UNAUTHORIZED" "$dir/crane401"
# Everything else.
want_refused fail "success" "$dir/ok"
want_refused fail "exit 1 without a registry answer (no daemon)" "$dir/nodaemon"
want_refused fail "plain false" false
want_refused fail "shell function (timeout cannot run it)" a_function
want_refused fail "program not found (127)" "$dir/no-such-program"
want_refused fail "not executable (126)" "$dir/notexec"
RUN_TIMEOUT=1 want_refused fail "hangs until timeout (124)" "$dir/hangs"
want_refused fail "killed by a signal" "$dir/killed"

# Every "refused X" in scenarios.sh must run a program: X is not a function
# defined there (timeout would answer 127, which the check now fails on, but
# the scenario would then never test what it says).
funcs=$(sed -n 's/^[[:space:]]*\([A-Za-z_][A-Za-z0-9_]*\)[[:space:]]*()[[:space:]]*{.*/\1/p' "$E2E_DIR/scenarios.sh" "$E2E_DIR/lib.sh" | sort -u)
uses=$(grep -o 'refused [^ ]*' "$E2E_DIR/scenarios.sh" | awk '{print $2}' | sort -u)
[ -n "$uses" ] || { echo "FAIL no refusal check found in scenarios.sh" >&2; fails=$((fails + 1)); }
for u in $uses; do
	if grep -qx -- "$u" <<<"$funcs"; then
		echo "FAIL scenarios.sh: refused $u: $u is a shell function" >&2
		fails=$((fails + 1))
	else
		echo "ok   scenarios.sh: refused $u runs a program" >&2
	fi
done

if [ "$fails" -ne 0 ]; then
	echo "refusal check self-test: $fails failure(s); log:" >&2
	sed 's/^/  /' "$dir/log" >&2
	exit 1
fi
echo "refusal check self-test: ok" >&2
