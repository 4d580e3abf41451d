// Package testminio runs a real MinIO server for tests of the shared cache
// tier: a `minio` binary on PATH or in $GOPATH/bin (go install
// github.com/minio/minio@latest), serving a temporary directory on
// 127.0.0.1, with one bucket.
//
// Without the binary, Start skips the test with a message, unless the
// environment variable DOCKER_PROXY_REQUIRE_MINIO=1 is set (as in CI): then
// the test fails.
package testminio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/build"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

// Credentials of every server Start runs.
const (
	AccessKey = "docker-proxy-test"
	SecretKey = "docker-proxy-test-secret"
)

// Server is a running MinIO.
type Server struct {
	// Endpoint is "http://127.0.0.1:PORT".
	Endpoint string
	// Bucket exists and is empty at Start.
	Bucket string
	// Client is a client of the server, for tests that look at or damage
	// what is in the bucket.
	Client *s3.Client

	cmd      *exec.Cmd
	exited   chan struct{}
	stopOnce sync.Once
}

// Binary returns the path of the minio binary, or "".
func Binary() string {
	if p, err := exec.LookPath("minio"); err == nil {
		return p
	}
	for _, dir := range filepath.SplitList(build.Default.GOPATH) {
		p := filepath.Join(dir, "bin", "minio")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	return ""
}

// Start runs a server for t with an empty bucket and stops it at cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		msg := "no minio binary on PATH or in $GOPATH/bin (go install github.com/minio/minio@latest)"
		if os.Getenv("DOCKER_PROXY_REQUIRE_MINIO") == "1" {
			t.Fatalf("%s, and DOCKER_PROXY_REQUIRE_MINIO=1", msg)
		}
		t.Skip(msg + "; set DOCKER_PROXY_REQUIRE_MINIO=1 to fail instead")
	}
	var lastErr error
	// Free ports picked beforehand may be taken meanwhile: try again.
	for range 3 {
		s, err := start(t, bin)
		if err == nil {
			return s
		}
		lastErr = err
	}
	t.Fatalf("testminio: %v", lastErr)
	return nil
}

func start(t testing.TB, bin string) (*Server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	console, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "server", filepath.Join(dir, "data"), "--address", addr, "--console-address", console, "--quiet")
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+AccessKey,
		"MINIO_ROOT_PASSWORD="+SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"HOME="+dir, // its config and certs directory
	)
	log, err := os.Create(filepath.Join(dir, "minio.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %v", bin, err)
	}
	s := &Server{Endpoint: "http://" + addr, Bucket: "docker-proxy-test", cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(s.Stop)
	if err := s.waitReady(addr, 60*time.Second); err != nil {
		s.Stop()
		out, _ := os.ReadFile(filepath.Join(dir, "minio.log"))
		return nil, fmt.Errorf("%v; its output:\n%s", err, out)
	}
	s.Client = s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
	})
	// Health checks may pass before the object layer is up, which then
	// answers "Server not initialized yet": try until it takes it.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		_, err := s.Client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(s.Bucket)})
		var ae smithy.APIError
		if err == nil || errors.As(err, &ae) && ae.ErrorCode() == "BucketAlreadyOwnedByYou" {
			return s, nil
		}
		select {
		case <-ctx.Done():
			s.Stop()
			return nil, fmt.Errorf("creating bucket: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitReady polls the readiness endpoint until the server answers 200.
func (s *Server) waitReady(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-s.exited:
			return errors.New("minio exited before it was ready")
		default:
		}
		resp, err := client.Get("http://" + addr + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("minio not ready on %s within %v (last: %v)", addr, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the server (the process Start started) and waits for it to
// exit. Calling it more than once is fine.
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

// Objects lists the names of the objects under prefix.
func (s *Server) Objects(t testing.TB, prefix string) []string {
	t.Helper()
	var names []string
	pages := s3.NewListObjectsV2Paginator(s.Client, &s3.ListObjectsV2Input{Bucket: aws.String(s.Bucket), Prefix: aws.String(prefix)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(context.Background())
		if err != nil {
			t.Fatalf("listing bucket: %v", err)
		}
		for _, obj := range page.Contents {
			names = append(names, aws.ToString(obj.Key))
		}
	}
	return names
}

// Get returns an object's bytes.
func (s *Server) Get(t testing.TB, name string) []byte {
	t.Helper()
	out, err := s.Client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(name)})
	if err != nil {
		t.Fatalf("getting %s: %v", name, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", name, err)
	}
	return b
}

// Put writes an object's bytes, keeping the content type and metadata of
// the object it replaces, if any.
func (s *Server) Put(t testing.TB, name string, data []byte) {
	t.Helper()
	ctx := context.Background()
	in := &s3.PutObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(name), Body: bytes.NewReader(data)}
	if head, err := s.Client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(name)}); err == nil {
		in.ContentType, in.Metadata = head.ContentType, head.Metadata
	}
	if _, err := s.Client.PutObject(ctx, in); err != nil {
		t.Fatalf("putting %s: %v", name, err)
	}
}

// freeAddr returns a 127.0.0.1 address with a port free right now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
