module github.com/caddy-dockerproxy/dockerproxy/bench

go 1.26.8
