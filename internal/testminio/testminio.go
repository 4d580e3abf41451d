package testminio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/build"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testproc"
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

	proc *testproc.Process
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
	bin := testproc.Require(t, Binary(), "DOCKER_PROXY_REQUIRE_MINIO", "minio, on PATH or in $GOPATH/bin (go install github.com/minio/minio@latest)")
	return testproc.Retry(t, "testminio", func() (*Server, error) { return start(t, bin) })
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
	proc, err := testproc.Start(t, cmd, filepath.Join(dir, "minio.log"))
	if err != nil {
		return nil, err
	}
	s := &Server{Endpoint: "http://" + addr, Bucket: "docker-proxy-test", proc: proc}
	if err := proc.WaitReady(s.Endpoint+"/minio/health/ready", 60*time.Second); err != nil {
		return nil, err
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

// Stop stops the server and waits for it to exit. Calling it more than
// once is fine.
func (s *Server) Stop() { s.proc.Stop() }

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
