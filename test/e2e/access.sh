# shellcheck shell=bash
# Who may use the proxy, end to end: proxy accounts (docker login to the
# proxy host, crane auth login, skopeo --creds), repository rules (DENIED),
# and a TLS client certificate in front of dockerd's mirror mode.
# Sourced by scenarios.sh, which calls access_setup before Caddy starts,
# puts $(access_sites) into Caddy's config and runs s7_access each round.

PH=private.example.test$PSUF # proxy accounts + a deny rule
TH=mtls.example.test$PSUF    # client certificate required
PROXY_USER=e2eproxy
PROXY_PASS=e2e-proxy-pass

# access_setup: the account's hash (caddy hash-password, its default
# algorithm) and a client CA with one client certificate (openssl).
access_setup() {
	mkdir -p "$T/access"
	PROXY_HASH=$(caddy hash-password --plaintext "$PROXY_PASS") || return 1
	log "  hash of $PROXY_USER: ${PROXY_HASH:0:7}..."
	local d=$T/access
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=e2e client CA" \
		-keyout "$d/client-ca.key" -out "$d/client-ca.pem" 2>/dev/null || return 1
	openssl req -newkey rsa:2048 -nodes -subj "/CN=e2e dockerd" \
		-keyout "$d/client.key" -out "$d/client.csr" 2>/dev/null || return 1
	printf 'extendedKeyUsage = clientAuth\n' >"$d/client.ext"
	openssl x509 -req -in "$d/client.csr" -CA "$d/client-ca.pem" -CAkey "$d/client-ca.key" \
		-CAcreateserial -days 2 -extfile "$d/client.ext" -out "$d/client.cert" 2>/dev/null || return 1
	# A certificate from another CA, which the site must refuse too.
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=stranger" \
		-keyout "$d/stranger.key" -out "$d/stranger.cert" 2>/dev/null || return 1
	openssl verify -CAfile "$d/client-ca.pem" "$d/client.cert" >&2
}

# access_sites: the site blocks of the two gated hosts, for start_caddy.
access_sites() {
	cat <<EOF2
private.example.test$PSUF {
	tls {
		issuer acme {
			dir https://127.0.0.1:$PEBBLE_PORT/dir
			trusted_roots $T/pki/pebble.minica.pem
		}
	}
	log {
		output file $T/caddy/access.log
	}
	docker_proxy docker.io {
		upstream docker.io http://$HUB
		users {
			$PROXY_USER $PROXY_HASH
		}
		deny docker.io team/big
		cache $T/cache {
			tag_ttl 1m
		}
	}
}

mtls.example.test$PSUF {
	tls {
		issuer acme {
			dir https://127.0.0.1:$PEBBLE_PORT/dir
			trusted_roots $T/pki/pebble.minica.pem
			disable_tlsalpn_challenge
		}
		client_auth {
			mode require_and_verify
			trust_pool file $T/access/client-ca.pem
		}
	}
	log {
		output file $T/caddy/access.log
	}
	docker_proxy docker.io {
		upstream docker.io http://$HUB
		cache $T/cache {
			tag_ttl 1m
		}
	}
}
EOF2
}

# access_wait_certs: both hosts have their certificate (the mTLS host
# answers only with a client certificate).
access_wait_certs() {
	wait_for "certificate for $PH" 90 curl -sS -o /dev/null --cacert "$CA" "https://$PH/v2/" || return 1
	wait_for "certificate for $TH" 90 curl -sS -o /dev/null --cacert "$CA" \
		--cert "$T/access/client.cert" --key "$T/access/client.key" "https://$TH/v2/"
}

# access_wrappers: scripts, so that refused (which runs programs) can run
# them; the passwords come from files, never on a logged command line.
access_wrappers() {
	# dockerd trusts the proxy's certificate through certs.d only.
	mkdir -p "/etc/docker/certs.d/$PH" && cp "$CA" "/etc/docker/certs.d/$PH/ca.crt" || return 1
	wrapper docker_login_private_ "exec '$DOCKER' login -u '$PROXY_USER' --password-stdin '$PH' <\"\$1\""
	wrapper crane_login_private_ "SSL_CERT_FILE='$CA' SSL_CERT_DIR='$T/pki/empty' DOCKER_CONFIG='$T/crane-client' exec crane auth login '$PH' -u '$PROXY_USER' --password-stdin <\"\$1\""
	wrapper skopeo_inspect_creds_ "exec skopeo inspect --cert-dir '$T/pki/certdir' --creds \"\$(cat \"\$1\")\" \"docker://\$2\""
}

# skopeo_creds_check CREDS-FILE REF WANT
skopeo_creds_check() {
	local got
	got=$(out skopeo_inspect_creds_ "$1" "$2" | jq -r .Digest) || return 1
	note "skopeo inspect --creds $2 -> $got"
	expect_eq "digest skopeo inspect --creds reports for $2" "$3" "$got"
}

# refused_saying TEXT CMD...: CMD was refused, and said TEXT.
refused_saying() {
	local text=$1
	shift
	local saved=$REFUSAL_RE
	REFUSAL_RE=$text refused "$@"
	local rc=$?
	REFUSAL_RE=$saved
	return $rc
}

# access_logged USER PART: the access log names USER for a request of $PH
# whose URI contains PART.
access_logged() {
	if jq -e -s --arg h "${PH%%:*}" --arg u "$1" --arg p "$2" \
		'map(select((.request.host|split(":")[0]) == $h and .user_id == $u and (.request.uri|contains($p)))) | length > 0' \
		"$T/caddy/access.log" >/dev/null 2>&1; then
		log "  ok: the access log names $1 for $PH ...$2"
		return 0
	fi
	log "  MISMATCH: no access log line of $PH ...$2 with user_id $1"
	return 1
}

# docker_with_wrong_password: docker's stored credentials for $PH are
# wrong; a pull must be refused.
docker_with_stored_password() { # PASSWORD
	local auth
	auth=$(printf '%s:%s' "$PROXY_USER" "$1" | base64 -w0)
	jq --arg h "$PH" --arg a "$auth" '.auths[$h] = {auth: $a}' "$DOCKER_CONFIG/config.json" >"$T/access/config.json" &&
		cp "$T/access/config.json" "$DOCKER_CONFIG/config.json"
}

s7_private() {
	scenario "r$ROUND/7-private" "proxy accounts on $PH: docker login, crane auth, skopeo --creds; a denied repository"
	local ref=$PH/team/app:2 want=${EXP[team/app:2]}
	access_wrappers
	"$DOCKER" rmi -f "$ref" >/dev/null 2>&1
	check "anonymous docker pull $ref is refused (unauthorized)" \
		refused_saying 'unauthorized|authentication required' "$DOCKER" pull "$ref"
	check "anonymous crane digest $ref is refused (401)" refused_with 401 crane_ digest "$ref"
	printf 'wrong-pass\n' >"$T/access/wrong.pass"
	check "docker login $PH with a wrong password is refused" \
		refused_saying 'unauthorized|incorrect|401' docker_login_private_ "$T/access/wrong.pass"
	docker_with_stored_password wrong-pass
	check "docker pull $ref with a wrong stored password is refused" \
		refused_saying 'unauthorized|401|wrong user name or password' "$DOCKER" pull "$ref"
	printf '%s\n' "$PROXY_PASS" >"$T/access/right.pass"
	check "docker login $PH with the proxy account" run docker_login_private_ "$T/access/right.pass"
	check "docker pull $ref as $PROXY_USER" docker_pull_check "$ref" "$PH/team/app@$want"
	check "the access log names $PROXY_USER for the pull" access_logged "$PROXY_USER" "/v2/team/app/manifests/"
	check "docker pull $PH/team/big:1 (denied repository) is refused with DENIED" \
		refused_saying 'denied.*deny docker.io team/big' "$DOCKER" pull "$PH/team/big:1"
	check "docker logout $PH" run "$DOCKER" logout "$PH"

	check "crane auth login $PH" run crane_login_private_ "$T/access/right.pass"
	check "crane digest $ref as $PROXY_USER" crane_digest_check "$ref" "$want"
	check "crane digest $PH/team/big:1 (denied repository) is refused with DENIED" \
		refused_saying 'DENIED.*deny docker.io team/big' crane_ digest "$PH/team/big:1"
	check "crane auth logout $PH" run crane_ auth logout "$PH"
	check "crane digest $ref after logout is refused (401)" refused_with 401 crane_ digest "$ref"

	printf '%s:%s' "$PROXY_USER" "$PROXY_PASS" >"$T/access/right.creds"
	printf '%s:wrong-pass' "$PROXY_USER" >"$T/access/wrong.creds"
	check "skopeo inspect --creds (proxy account) docker://$ref" skopeo_creds_check "$T/access/right.creds" "$ref" "$want"
	check "skopeo inspect --creds with a wrong password is refused" \
		refused_saying 'unauthorized|401' skopeo_inspect_creds_ "$T/access/wrong.creds" "$ref"
	"$DOCKER" rmi -f "$ref" >/dev/null 2>&1
}

# dockerd_mirror URL: point dockerd's registry-mirrors at URL (a SIGHUP
# reloads them) and wait until it says so.
dockerd_mirror() {
	jq --arg m "$1" '."registry-mirrors" = [$m]' "$T/docker/daemon.json" >"$T/access/daemon.json" &&
		cp "$T/access/daemon.json" "$T/docker/daemon.json" || return 1
	kill -HUP "$(pid_of dockerd)" || return 1
	wait_for "dockerd mirrors [$1]" 30 bash -c '"$0" info -f "{{json .RegistryConfig.Mirrors}}" | grep -qF "$1"' "$DOCKER" "$1"
}

# mtls_handshake_refused: without a certificate, or with one of another
# CA, the TLS handshake itself fails: no HTTP answer at all. TLS 1.2, so
# that the refusal comes within the handshake (with TLS 1.3 the server's
# alert follows the client's Finished, and curl may report it as a
# failed read or write instead).
mtls_handshake_refused() {
	local rc how code
	for how in none stranger; do
		rc=0
		local cert=()
		[ $how = stranger ] && cert=(--cert "$T/access/stranger.cert" --key "$T/access/stranger.key")
		code=$(curl -sS --tls-max 1.2 -o /dev/null -w '%{http_code}' --cacert "$CA" "${cert[@]}" \
			"https://$TH/v2/" 2>"$T/access/curl.err") || rc=$?
		log "  curl --tls-max 1.2 https://$TH/v2/ (client certificate: $how) -> exit $rc, HTTP $code: $(head -c 300 "$T/access/curl.err")"
		# 35: the TLS handshake failed, on the server's alert.
		if [ "$rc" != 35 ] || [ "$code" != 000 ] || ! grep -qi 'alert' "$T/access/curl.err"; then
			log "  MISMATCH: want a TLS handshake failure on an alert (curl exit 35, no HTTP status)"
			return 1
		fi
	done
	code=$(curl -sS --tls-max 1.2 -o /dev/null -w '%{http_code}' --cacert "$CA" \
		--cert "$T/access/client.cert" --key "$T/access/client.key" "https://$TH/v2/") || return 1
	log "  with the client certificate: /v2/ -> HTTP $code"
	case $code in 200 | 401) ;; *) return 1 ;; esac
}

# mtls_not_served: the proxy's access log has no request of dockerd's
# pull on $TH since line $1.
mtls_not_served() {
	if tail -n +"$1" "$T/caddy/access.log" | jq -e -s --arg h "${TH%%:*}" \
		'map(select((.request.host|split(":")[0]) == $h and (.request.uri|contains("/manifests/")))) | length == 0' >/dev/null; then
		log "  ok: no manifest request reached $TH"
		return 0
	fi
	log "  MISMATCH: $TH served a manifest request without the client certificate"
	return 1
}

s7_mtls() {
	scenario "r$ROUND/7-mtls" "dockerd registry-mirrors [https://$TH], a site that requires a client certificate"
	check "without a client certificate, the TLS handshake with $TH fails (curl)" mtls_handshake_refused
	if [ "$NETNS" != 1 ]; then
		note "dockerd mirror mode through $TH skipped: on the host network $TH is on 127.0.0.1, which dockerd takes as insecure (it then reads no client certificate)"
		return 0
	fi
	local dir=/etc/docker/certs.d/$TH
	mkdir -p "$dir"
	cp "$CA" "$dir/ca.crt"
	cp "$T/access/client.cert" "$dir/client.cert"
	cp "$T/access/client.key" "$dir/client.key"
	check "dockerd reloads registry-mirrors [https://$TH]" dockerd_mirror "https://$TH"
	"$DOCKER" rmi -f e2ebusy:1.0 >/dev/null 2>&1
	check "docker pull e2ebusy:1.0 through the mirror, with the client certificate in certs.d" \
		docker_pull_check e2ebusy:1.0 "@${EXP[library/e2ebusy:1.0]}"
	check "the mirror $TH served the pull" proxy_saw "${TH%%:*}" "/v2/library/e2ebusy/manifests/"
	"$DOCKER" rmi -f e2ebusy:1.0 >/dev/null 2>&1
	rm -f "$dir/client.cert" "$dir/client.key"
	local lines dlines
	lines=$(($(wc -l <"$T/caddy/access.log") + 1))
	dlines=$(($(wc -l <"$T/docker/dockerd.log") + 1))
	# dockerd falls back to the upstream, unreachable here: the pull fails.
	local rc=0
	RUN_TIMEOUT=120 run "$DOCKER" pull e2ebusy:1.0 || rc=$?
	check "docker pull e2ebusy:1.0 without the client certificate fails (exit $rc)" [ "$rc" -ne 0 ]
	check "no request of that pull reached $TH" mtls_not_served "$lines"
	check "dockerd was refused in the TLS handshake with $TH (certificate required)" \
		bash -c 'tail -n +"$1" "$2" | grep -F "$3" | grep -q "tls: certificate required"' _ "$dlines" "$T/docker/dockerd.log" "https://$TH/v2/"
	check "dockerd's mirror back to https://$DH" dockerd_mirror "https://$DH"
}

s7_access() {
	s7_private
	s7_mtls
}
