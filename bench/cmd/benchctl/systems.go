package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Server is one system under test: a process the harness (re)starts on
// fresh ports, with a persistent instance directory and a cache directory
// that a cold start empties.
type Server struct {
	Key   string // dp, fs, ngx, ngxpc, dist
	Name  string // what the tables call it
	Proc  *Proc
	HTTP  string // http://127.0.0.1:port
	HTTPS string // https://127.0.0.1:port ("" if not served)
	Admin string // Caddy admin URL ("" if none)
	Dir   string
	Cache string
	Bin   string
	start func(s *Server) error
}

func (s *Server) URL(proto string) string {
	if proto == "h2" {
		return s.HTTPS
	}
	return s.HTTP
}

// Start (re)starts the server; fresh empties its cache first.
func (s *Server) Start(fresh bool) error {
	s.Stop()
	if fresh && s.Cache != "" {
		os.RemoveAll(s.Cache)
	}
	if s.Cache != "" {
		os.MkdirAll(s.Cache, 0o755)
	}
	return s.start(s)
}

func (s *Server) Stop() {
	if s.Proc != nil {
		s.Proc.Stop()
		s.Proc = nil
	}
}

func (s *Server) PID() int {
	if s.Proc == nil {
		return 0
	}
	return s.Proc.PID
}

func (h *H) caddyServer(key, name, site string) *Server {
	s := &Server{Key: key, Name: name, Dir: filepath.Join(h.cfg.Work, key), Bin: h.cfg.Caddy}
	if key == "dp" {
		s.Cache = filepath.Join(s.Dir, "cache")
	}
	os.MkdirAll(s.Dir, 0o755)
	s.start = func(s *Server) error {
		hp, tp, ap := freePort(), freePort(), freePort()
		body := site
		if key == "dp" {
			body = fmt.Sprintf("docker_proxy %s {\n\t\tcache %s {\n\t\t\ttag_ttl %s\n\t\t\tmax_size 20GiB\n\t\t}\n\t}",
				h.counterURL, s.Cache, h.cfg.TagTTL)
		}
		servers := ""
		if h.cfg.CaddyWriteChunk != "" {
			// Caddy's write chunk (64 KiB by default) bounds each
			// sendfile call; nginx's sendfile_max_chunk is 2 MiB.
			servers = fmt.Sprintf("\n\tservers {\n\t\ttimeouts {\n\t\t\twrite_max_chunk %s\n\t\t}\n\t}", h.cfg.CaddyWriteChunk)
		}
		conf := fmt.Sprintf(`{
	skip_install_trust
	admin localhost:%d
	auto_https disable_redirects
	http_port %d
	https_port %d
	persist_config off%s
}

http://127.0.0.1:%d {
	%s
}

https://127.0.0.1:%d {
	tls internal
	%s
}
`, ap, hp, tp, servers, hp, body, tp, body)
		cf := filepath.Join(s.Dir, "Caddyfile")
		if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
			return err
		}
		env := []string{"XDG_DATA_HOME=" + filepath.Join(s.Dir, "data"), "XDG_CONFIG_HOME=" + filepath.Join(s.Dir, "config")}
		p, err := startProc("caddy-"+key, env, filepath.Join(s.Dir, "caddy.log"), h.cfg.Caddy, "run", "--config", cf, "--adapter", "caddyfile")
		if err != nil {
			return err
		}
		s.Proc = p
		s.HTTP = fmt.Sprintf("http://127.0.0.1:%d", hp)
		s.HTTPS = fmt.Sprintf("https://127.0.0.1:%d", tp)
		s.Admin = fmt.Sprintf("http://localhost:%d", ap)
		if err := waitHTTP(p, s.HTTP+"/", 20*time.Second); err != nil {
			return err
		}
		return waitHTTP(p, s.HTTPS+"/", 20*time.Second)
	}
	return s
}

const nginxHead = `%s
worker_processes 2;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[2]s/tmp/body;
	proxy_temp_path %[2]s/tmp/proxy;
	fastcgi_temp_path %[2]s/tmp/fastcgi;
	uwsgi_temp_path %[2]s/tmp/uwsgi;
	scgi_temp_path %[2]s/tmp/scgi;
	default_type application/octet-stream;
	sendfile on;
	tcp_nopush on;
	keepalive_requests 100000000;
	keepalive_timeout 75s;
	ssl_certificate %[3]s;
	ssl_certificate_key %[4]s;
	ssl_protocols TLSv1.2 TLSv1.3;
`

func (h *H) nginxServer(key, name, httpLevel string, server func(s *Server) string) *Server {
	s := &Server{Key: key, Name: name, Dir: filepath.Join(h.cfg.Work, key), Bin: h.cfg.Nginx}
	if key == "ngxpc" {
		s.Cache = filepath.Join(s.Dir, "cache")
	}
	os.MkdirAll(filepath.Join(s.Dir, "tmp"), 0o755)
	s.start = func(s *Server) error {
		hp, tp := freePort(), freePort()
		user := ""
		if os.Geteuid() == 0 {
			user = "user root;"
		}
		s.HTTP = fmt.Sprintf("http://127.0.0.1:%d", hp)
		s.HTTPS = fmt.Sprintf("https://127.0.0.1:%d", tp)
		conf := fmt.Sprintf(nginxHead, user, s.Dir, h.certFile, h.keyFile) + httpLevel +
			fmt.Sprintf("\tserver {\n\t\tlisten 127.0.0.1:%d;\n\t\tlisten 127.0.0.1:%d ssl http2;\n", hp, tp) +
			server(s) + "\t}\n}\n"
		cf := filepath.Join(s.Dir, "nginx.conf")
		if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
			return err
		}
		p, err := startProc("nginx-"+key, nil, filepath.Join(s.Dir, "stderr.log"), h.cfg.Nginx, "-p", s.Dir, "-c", cf, "-e", filepath.Join(s.Dir, "error.log"))
		if err != nil {
			return err
		}
		s.Proc = p
		if err := waitHTTP(p, s.HTTP+"/", 10*time.Second); err != nil {
			return err
		}
		return waitHTTP(p, s.HTTPS+"/", 10*time.Second)
	}
	return s
}

func (h *H) nginxStatic(root string) *Server {
	return h.nginxServer("ngx", "nginx static", "", func(*Server) string {
		return fmt.Sprintf("\t\troot %s;\n", root)
	})
}

// nginxProxyCache is nginx as docker-registry-proxy configures it: blobs
// and manifests by digest cached for 60 days under a key of the digest or
// URI, with proxy_cache_lock so that concurrent misses wait for one fill;
// manifests by tag cached for the same time as docker_proxy's tag_ttl.
func (h *H) nginxProxyCache() *Server {
	cache := filepath.Join(h.cfg.Work, "ngxpc", "cache")
	httpLevel := fmt.Sprintf("\tproxy_cache_path %s levels=1:2 keys_zone=cache:10m max_size=20g inactive=60d use_temp_path=off;\n"+
		"\tupstream registry {\n\t\tserver %s;\n\t\tkeepalive 64;\n\t}\n", cache, strings.TrimPrefix(h.counterURL, "http://"))
	return h.nginxServer("ngxpc", "nginx proxy_cache", httpLevel, func(s *Server) string {
		loc := func(re, key, extra string) string {
			return fmt.Sprintf(`		location ~ %s {
			set $cache_key %s;
			proxy_pass http://registry;
			proxy_cache cache;
			proxy_cache_key $cache_key;
			proxy_cache_use_stale error timeout http_500 http_502 http_504 http_429;
%s		}
`, re, key, extra)
		}
		return fmt.Sprintf(`		chunked_transfer_encoding on;
		proxy_read_timeout 900;
		proxy_http_version 1.1;
		proxy_set_header Connection "";
		proxy_cache_lock on;
		proxy_cache_lock_timeout 880s;
		proxy_cache_valid 200 206 60d;
		proxy_force_ranges on;
		proxy_ignore_client_abort on;
		proxy_cache_revalidate on;
		proxy_hide_header Set-Cookie;
		proxy_ignore_headers X-Accel-Expires Expires Cache-Control Set-Cookie;
		add_header X-Cache-Status $upstream_cache_status;
`) + loc(`^/v2/(.*)/blobs/sha256:(.*)`, "$2", "") +
			loc(`^/v2/(.*)/manifests/sha256:(.*)`, "$uri", "") +
			loc(`^/v2/(.*)/manifests/`, "$uri", fmt.Sprintf("\t\t\tproxy_cache_valid 200 206 %s;\n", h.cfg.TagTTL)) +
			"\t\tlocation / {\n\t\t\tproxy_pass http://registry;\n\t\t}\n"
	})
}

const registryConf = `version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: 127.0.0.1:%d
  secret: bench-not-secret
%s`

// registryServer is distribution's registry: the upstream (proxy == "")
// or a pull-through cache of proxy.
func (h *H) registryServer(key, name, proxy string) *Server {
	s := &Server{Key: key, Name: name, Dir: filepath.Join(h.cfg.Work, key), Bin: h.cfg.Registry}
	s.Cache = filepath.Join(s.Dir, "storage")
	os.MkdirAll(s.Dir, 0o755)
	s.start = func(s *Server) error {
		port := freePort()
		extra := ""
		if proxy != "" {
			extra = fmt.Sprintf("proxy:\n  remoteurl: %s\n  ttl: 168h\n", proxy)
		}
		cf := filepath.Join(s.Dir, "config.yml")
		if err := os.WriteFile(cf, []byte(fmt.Sprintf(registryConf, s.Cache, port, extra)), 0o644); err != nil {
			return err
		}
		env := []string{"OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_LOGS_EXPORTER=none", "OTEL_SDK_DISABLED=true"}
		p, err := startProc("registry-"+key, env, filepath.Join(s.Dir, "registry.log"), h.cfg.Registry, "serve", cf)
		if err != nil {
			return err
		}
		s.Proc = p
		s.HTTP = fmt.Sprintf("http://127.0.0.1:%d", port)
		return waitHTTP(p, s.HTTP+"/v2/", 20*time.Second)
	}
	return s
}

// writeCert makes a self-signed P-256 certificate for 127.0.0.1 (the key
// type Caddy's internal CA uses) for nginx.
func writeCert(dir string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(48 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}
