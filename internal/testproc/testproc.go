package testproc

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Require returns bin, the path of a binary a test needs ("" when it is
// not installed). Without it the test is skipped with installHint, or
// fails when the environment variable requireEnv is "1" (as in CI).
func Require(t testing.TB, bin, requireEnv, installHint string) string {
	t.Helper()
	if bin != "" {
		return bin
	}
	msg := "not installed: " + installHint
	if os.Getenv(requireEnv) == "1" {
		t.Fatalf("%s, and %s=1", msg, requireEnv)
	}
	t.Skipf("%s; set %s=1 to fail instead", msg, requireEnv)
	return ""
}

// Retry calls start up to three times: a free port picked beforehand may
// be taken by the time the server binds it. The test fails if none
// succeeds.
func Retry[T any](t testing.TB, what string, start func() (T, error)) T {
	t.Helper()
	var lastErr error
	for range 3 {
		v, err := start()
		if err == nil {
			return v
		}
		lastErr = err
	}
	t.Fatalf("%s: %v", what, lastErr)
	var zero T
	return zero
}

// Process is a server this package started.
type Process struct {
	name     string
	logPath  string
	cmd      *exec.Cmd
	exited   chan struct{}
	stopOnce sync.Once
}

// Start starts cmd with its output in the file logPath, and stops it at
// t's cleanup.
func Start(t testing.TB, cmd *exec.Cmd, logPath string) (*Process, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %v", cmd.Path, err)
	}
	p := &Process{name: cmd.Path, logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.Stop)
	return p, nil
}

// WaitReady polls url until it answers 200, the process exits, or within
// passes. On failure the process is stopped and the error quotes its
// output.
func (p *Process) WaitReady(url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		var err error
		select {
		case <-p.exited:
			err = errors.New("exited before it was ready")
		default:
			var resp *http.Response
			if resp, err = client.Get(url); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
				err = fmt.Errorf("%s answered %d", url, resp.StatusCode)
			}
			if time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			err = fmt.Errorf("not ready within %v (last: %v)", within, err)
		}
		p.Stop()
		out, _ := os.ReadFile(p.logPath)
		return fmt.Errorf("%s %v; its output:\n%s", p.name, err, out)
	}
}

// Stop stops the process and waits for it to exit. Calling it more than
// once is fine.
func (p *Process) Stop() {
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}
