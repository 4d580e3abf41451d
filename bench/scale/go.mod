module github.com/caddy-dockerproxy/dockerproxy/bench/scale

go 1.26.8

require (
	github.com/caddy-dockerproxy/dockerproxy v0.0.0
	github.com/opencontainers/go-digest v1.0.0
)

require (
	go.uber.org/multierr v1.11.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
)

replace github.com/caddy-dockerproxy/dockerproxy => ../..
