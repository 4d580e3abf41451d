package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a child process the harness started. Every child runs in its own
// process group, whose id (== its PID) is appended to the PID file right
// after the start, so that bench/run's trap can stop it whatever happens to
// this program.
type Proc struct {
	Name string
	PID  int
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

var (
	procsMu sync.Mutex
	procs   = map[int]*Proc{}
	pidFile string
)

func startProc(name string, env []string, logPath string, argv ...string) (*Proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, PID: cmd.Process.Pid, Log: logPath, cmd: cmd, done: make(chan struct{})}
	procsMu.Lock()
	procs[p.PID] = p
	if pidFile != "" {
		if f, err := os.OpenFile(pidFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			fmt.Fprintf(f, "%d %s\n", p.PID, name)
			f.Close()
		}
	}
	procsMu.Unlock()
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop ends the process group: SIGTERM, then SIGKILL after a grace period.
func (p *Proc) Stop() {
	if p == nil {
		return
	}
	if !p.Exited() {
		syscall.Kill(-p.PID, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-p.PID, syscall.SIGKILL)
			<-p.done
		}
	}
	// Workers left in the group (nginx) go too.
	syscall.Kill(-p.PID, syscall.SIGKILL)
	procsMu.Lock()
	delete(procs, p.PID)
	procsMu.Unlock()
}

func stopAll() {
	procsMu.Lock()
	list := make([]*Proc, 0, len(procs))
	for _, p := range procs {
		list = append(list, p)
	}
	procsMu.Unlock()
	var wg sync.WaitGroup
	for _, p := range list {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop() }()
	}
	wg.Wait()
}

// LogTail returns the last lines of the process log, for error messages.
func (p *Proc) LogTail(n int) string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var (
	portsMu   sync.Mutex
	usedPorts = map[int]bool{}
)

// freePort returns a loopback port nobody listens on now and that this run
// has not handed out before. Caddy binds with SO_REUSEPORT, so a port that
// another Caddy on this machine already holds would be shared silently:
// the kernel never returns a port in use for bind(0), and we check the
// listening sockets once more.
func freePort() int {
	portsMu.Lock()
	defer portsMu.Unlock()
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			continue
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if usedPorts[port] || listening(port) {
			continue
		}
		usedPorts[port] = true
		return port
	}
	panic("no free port")
}

// listening reports whether any socket on this machine listens on port.
func listening(port int) bool {
	hex := fmt.Sprintf(":%04X ", port)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) > 3 && strings.HasSuffix(fields[1]+" ", hex) && fields[3] == "0A" {
				fh.Close()
				return true
			}
		}
		fh.Close()
	}
	return false
}

// waitHTTP polls url until it answers (any status) or the process exits.
func waitHTTP(p *Proc, url string, timeout time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true,
	}}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.Name, p.err, p.LogTail(15))
		}
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready at %s after %v: %v\n%s", p.Name, url, timeout, last, p.LogTail(15))
}

// memStatus reads VmHWM and VmRSS (bytes) of pid.
func memStatus(pid int) (hwm, rss int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmHWM:":
			hwm = v << 10
		case "VmRSS:":
			rss = v << 10
		}
	}
	return
}

// groupProcs calls fn with the pid and the /proc/PID/stat fields after the
// command name (f[0] is field 3, state; pgrp is f[2], utime f[11], stime
// f[12]) of every process in process group pgid.
func groupProcs(pgid int, fn func(pid int, f []string)) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid {
			fn(pid, f)
		}
	}
}

// groupRSS sums VmRSS over every process in process group pgid.
func groupRSS(pgid int) int64 {
	var sum int64
	groupProcs(pgid, func(pid int, _ []string) {
		_, rss := memStatus(pid)
		sum += rss
	})
	return sum
}

// rssSampler records the peak RSS of a process group while it runs: the
// sampled sum over the group, and for a single-process server its VmHWM.
type rssSampler struct {
	stop chan struct{}
	done chan struct{}
	peak int64
}

func sampleRSS(ctx context.Context, pgid int) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if r := groupRSS(pgid); r > s.peak {
				s.peak = r
			}
			select {
			case <-s.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Peak stops the sampler and returns the peak: the larger of the sampled
// group sum and the main process's VmHWM.
func (s *rssSampler) Peak(pid int) int64 {
	close(s.stop)
	<-s.done
	if r := groupRSS(pid); r > s.peak {
		s.peak = r
	}
	hwm, _ := memStatus(pid)
	if hwm > s.peak {
		return hwm
	}
	return s.peak
}

var errSkipped = errors.New("skipped")

// groupCPU returns the CPU time (user+system, seconds) used so far by the
// processes of process group pgid.
func groupCPU(pgid int) float64 {
	if pgid <= 0 {
		return 0
	}
	var ticks int64
	groupProcs(pgid, func(_ int, f []string) {
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	})
	return float64(ticks) / 100 // USER_HZ
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
