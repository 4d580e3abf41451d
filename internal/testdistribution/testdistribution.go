package testdistribution

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testproc"
)

// Server is a running registry.
type Server struct {
	URL  string // "http://127.0.0.1:PORT"
	Host string // "127.0.0.1:PORT"

	proc *testproc.Process
}

// Binary returns the path of distribution 2.8's registry (Debian's
// docker-registry), or "" if it is not installed.
func Binary() string {
	p, err := exec.LookPath("docker-registry")
	if err != nil {
		return ""
	}
	return p
}

// BinaryV3 returns the path of distribution v3's registry (go install
// github.com/distribution/distribution/v3/cmd/registry), or "" if it is
// not installed: a "registry" in PATH or GOPATH/bin that says it is v3.
func BinaryV3() string {
	candidates := []string{}
	if p, err := exec.LookPath("registry"); err == nil {
		candidates = append(candidates, p)
	}
	if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		candidates = append(candidates, filepath.Join(strings.TrimSpace(string(gopath)), "bin", "registry"))
	}
	for _, p := range candidates {
		out, err := exec.Command(p, "--version").Output()
		if err == nil && strings.Contains(string(out), "distribution/distribution/v3") {
			return p
		}
	}
	return ""
}

// Start runs distribution 2.8 for the test and stops it with t.Cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := testproc.Require(t, Binary(), "DOCKER_PROXY_REQUIRE_REGISTRY", "docker-registry (apt-get install docker-registry)")
	return testproc.Retry(t, "testdistribution", func() (*Server, error) { return start(t, bin) })
}

// StartV3 runs distribution v3 for the test and stops it with t.Cleanup.
func StartV3(t testing.TB) *Server {
	t.Helper()
	bin := testproc.Require(t, BinaryV3(), "DOCKER_PROXY_REQUIRE_REGISTRY",
		"distribution v3 (go install github.com/distribution/distribution/v3/cmd/registry@v3.1.2)")
	return testproc.Retry(t, "testdistribution v3", func() (*Server, error) { return start(t, bin) })
}

func start(t testing.TB, bin string) (*Server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
`, filepath.Join(dir, "data"), addr)
	configPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		return nil, err
	}
	proc, err := testproc.Start(t, exec.Command(bin, "serve", configPath), filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	s := &Server{URL: "http://" + addr, Host: addr, proc: proc}
	if err := proc.WaitReady(s.URL+"/v2/", 30*time.Second); err != nil {
		return nil, err
	}
	return s, nil
}

// Stop stops the registry and waits for it to exit. Calling it more than
// once is fine.
func (s *Server) Stop() { s.proc.Stop() }
