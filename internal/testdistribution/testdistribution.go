// Package testdistribution runs distribution's registry (Debian's
// docker-registry package, distribution 2.8: /usr/bin/docker-registry) for
// tests, on 127.0.0.1, with filesystem storage and no auth. It is the real
// registry that answers a client sending no Accept with a schema 1 signed
// manifest converted on the fly, which go-containerregistry's registry
// does not do.
//
// Without the binary, Start skips the test with a message, unless the
// environment variable DOCKER_PROXY_REQUIRE_REGISTRY=1 is set (as in CI):
// then the test fails.
package testdistribution

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is a running registry.
type Server struct {
	URL  string // "http://127.0.0.1:PORT"
	Host string // "127.0.0.1:PORT"

	cmd      *exec.Cmd
	exited   chan struct{}
	stopOnce sync.Once
}

// Binary returns the registry's path, or "" if it is not installed.
func Binary() string {
	p, err := exec.LookPath("docker-registry")
	if err != nil {
		return ""
	}
	return p
}

// Start runs a registry for the test and stops it with t.Cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		msg := "no docker-registry binary on PATH (apt-get install docker-registry)"
		if os.Getenv("DOCKER_PROXY_REQUIRE_REGISTRY") == "1" {
			t.Fatalf("%s, and DOCKER_PROXY_REQUIRE_REGISTRY=1", msg)
		}
		t.Skip(msg + "; set DOCKER_PROXY_REQUIRE_REGISTRY=1 to fail instead")
	}
	var lastErr error
	// A free port picked beforehand may be taken meanwhile: try again.
	for range 3 {
		s, err := start(t, bin)
		if err == nil {
			return s
		}
		lastErr = err
	}
	t.Fatalf("testdistribution: %v", lastErr)
	return nil
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
	log, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(bin, "serve", configPath)
	cmd.Stdout, cmd.Stderr = log, log
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %v", bin, err)
	}
	s := &Server{URL: "http://" + addr, Host: addr, cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(s.Stop)
	if err := s.waitReady(30 * time.Second); err != nil {
		s.Stop()
		out, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
		return nil, fmt.Errorf("%v; its output:\n%s", err, out)
	}
	return s, nil
}

// waitReady polls /v2/ until the registry answers 200.
func (s *Server) waitReady(within time.Duration) error {
	deadline := time.Now().Add(within)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-s.exited:
			return errors.New("docker-registry exited before it was ready")
		default:
		}
		resp, err := client.Get(s.URL + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("docker-registry not ready on %s within %v (last: %v)", s.Host, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the registry this package started and waits for it to exit.
// Calling it more than once is fine.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	})
}
