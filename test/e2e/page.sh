# shellcheck shell=bash
# The page browsers get at the proxy's address, seen in a real browser:
# Debian's chromium, headless, over HTTPS with the certificate Caddy got
# from pebble through ACME. chromium trusts pebble's root the way a user's
# browser trusts a private CA, through an NSS database in its home, and
# nothing else. The registry-mirrors line of the rendered page then
# becomes the daemon.json of the suite's dockerd (Caddy starts before
# dockerd), which must pull through it.
#
# Sourced by scenarios.sh, whose variables (T, CA, DH, DOCKER, EXP) it uses.
# Screenshots and the rendered DOM go to $E2E_ARTIFACTS, which outlives
# the run (default: test/e2e/artifacts in the repository).

E2E_ARTIFACTS=${E2E_ARTIFACTS:-$REPO/test/e2e/artifacts}
PAGE_DIR=$T/page

# chromium_ ARGS...: headless chromium as root, with a new empty profile
# and a home of its own (its NSS database), no network of its own making.
chromium_() {
	HOME="$PAGE_DIR/home" timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic \
		--no-first-run --disable-background-networking --disable-component-update --disable-sync \
		--user-data-dir="$PAGE_DIR/profile" "$@"
}

page_browser_setup() {
	rm -rf "$PAGE_DIR"
	mkdir -p "$PAGE_DIR/home/.pki/nssdb" "$PAGE_DIR/profile" "$E2E_ARTIFACTS" || return 1
	run certutil -d "sql:$PAGE_DIR/home/.pki/nssdb" -N --empty-password || return 1
	run certutil -d "sql:$PAGE_DIR/home/.pki/nssdb" -A -n "pebble issuing root" -t "C,," -i "$CA" || return 1
	note "browser: $(chromium --version 2>/dev/null)"
}

# page_in_browser: open https://$DH/ in chromium, keep screenshots (a
# phone's width and a desktop's) and the rendered DOM, and check what a
# visitor sees: the host's registry-mirrors line, and the page's script
# having run under its Content-Security-Policy (it adds the Copy buttons),
# with no policy violation reported.
page_in_browser() {
	page_browser_setup || return 1
	local url="https://$DH/" rc=0
	log "  \$ chromium --headless ... --dump-dom $url"
	chromium_ --enable-logging=stderr --v=0 --dump-dom "$url" >"$PAGE_DIR/dom.html" 2>"$PAGE_DIR/chromium.log" || rc=$?
	cp "$PAGE_DIR/dom.html" "$E2E_ARTIFACTS/page-dom.html"
	if [ "$rc" != 0 ] || [ ! -s "$PAGE_DIR/dom.html" ]; then
		log "  MISMATCH: chromium exit $rc, $(wc -c <"$PAGE_DIR/dom.html") bytes of DOM (a certificate error renders nothing)"
		tail -20 "$PAGE_DIR/chromium.log" | sed 's/^/    | /' >&2
		return 1
	fi
	local shot
	for shot in phone:412,2400 desktop:1280,1800; do
		chromium_ --hide-scrollbars --window-size="${shot#*:}" --screenshot="$E2E_ARTIFACTS/page-${shot%%:*}.png" "$url" \
			>>"$PAGE_DIR/chromium.log" 2>&1 || { log "  MISMATCH: no ${shot%%:*} screenshot"; return 1; }
		expect_eq "PNG signature of page-${shot%%:*}.png" "89504e470d0a1a0a" \
			"$(head -c 8 "$E2E_ARTIFACTS/page-${shot%%:*}.png" | od -An -tx1 | tr -d ' \n')" || return 1
	done
	note "page screenshots and DOM: $E2E_ARTIFACTS/page-phone.png, page-desktop.png, page-dom.html"

	local line
	line=$(grep -m1 '"registry-mirrors"' "$PAGE_DIR/dom.html" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
	note "the page's registry-mirrors line: $line"
	expect_eq "registry-mirrors line of the rendered page" "\"registry-mirrors\": [\"https://$DH\"]" "$line" || return 1
	local buttons
	buttons=$(grep -c 'class="copy"' "$PAGE_DIR/dom.html")
	[ "$buttons" -gt 0 ] || { log "  MISMATCH: no Copy button: the page's script did not run"; return 1; }
	log "  ok: $buttons Copy buttons: the page's script ran under its Content-Security-Policy"
	if grep -i 'content security policy' "$PAGE_DIR/chromium.log" | sed 's/^/    | /' >&2; then
		log "  MISMATCH: chromium reports a Content-Security-Policy violation"
		return 1
	fi
	# The line as the page gave it, and nothing else, is dockerd's config.
	printf '{\n%s\n}\n' "$line" >"$PAGE_DIR/daemon.json"
	jq -e --arg m "https://$DH" '. == {"registry-mirrors": [$m]}' "$PAGE_DIR/daemon.json" >/dev/null ||
		{ log "  MISMATCH: the line does not make a daemon.json"; return 1; }
}

# page_daemon_json FILE: dockerd's config becomes the page's line, when the
# browser check got one (else FILE stays as the suite wrote it, and that
# check has failed).
page_daemon_json() {
	[ -s "$PAGE_DIR/daemon.json" ] || return 0
	cp "$PAGE_DIR/daemon.json" "$1"
	log "dockerd's daemon.json is the page's: $(tr -d '\n' <"$1")"
}

# page_mirror_pull: dockerd, configured by the page's line, pulls a Docker
# Hub image by its short name through the mirror.
page_mirror_pull() {
	expect_eq "dockerd's daemon.json" "$(cat "$PAGE_DIR/daemon.json" 2>/dev/null)" "$(cat "$T/docker/daemon.json")" || return 1
	expect_contains "dockerd's mirrors" "$("$DOCKER" info -f '{{json .RegistryConfig.Mirrors}}')" "https://$DH" || return 1
	docker_pull_check e2ebusy:1.0 "e2ebusy@${EXP[library/e2ebusy:1.0]}" || return 1
	proxy_saw docker.example.test /v2/library/e2ebusy/manifests/1.0 || return 1
	"$DOCKER" rmi -f e2ebusy:1.0 >/dev/null
}

page_scenario_browser() {
	local prev=$CUR_SCENARIO
	scenario page "the page at https://$DH/ in chromium (headless); its registry-mirrors line configures dockerd"
	check "chromium renders https://$DH/ over HTTPS (pebble's certificate) with the line \"registry-mirrors\": [\"https://$DH\"]" page_in_browser
	CUR_SCENARIO=$prev
}

page_scenario_pull() {
	local prev=$CUR_SCENARIO
	CUR_SCENARIO=page
	check "docker pull e2ebusy:1.0 through the registry-mirrors line taken from the page" page_mirror_pull
	CUR_SCENARIO=$prev
}
