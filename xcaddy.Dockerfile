# Caddy with the docker_proxy plugin, built from this checkout.
#
#	docker build -f xcaddy.Dockerfile -t caddy-docker-proxy .
#	docker run -d --name docker-proxy \
#		-p 80:80 -p 443:443 \
#		-e DOCKER_PROXY_DOMAIN=example.com \
#		-v docker-proxy-data:/data -v docker-proxy-config:/config \
#		caddy-docker-proxy
#
# The image serves Caddyfile.example (see its comments for the environment
# it reads). Certificates, the auth key and the cache live under /data: keep
# that volume. To use your own Caddyfile, mount it at /etc/caddy/Caddyfile.

FROM caddy:2.11-builder AS builder

# The plugin's go.mod may require a newer Go than the builder image ships;
# let the go command fetch that toolchain instead of failing.
ENV GOTOOLCHAIN=auto

COPY . /src/dockerproxy
RUN xcaddy build --with github.com/caddy-dockerproxy/dockerproxy=/src/dockerproxy

FROM caddy:2.11

COPY --from=builder /usr/bin/caddy /usr/bin/caddy
COPY Caddyfile.example /etc/caddy/Caddyfile
