package s3remote

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/opencontainers/go-digest"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

// Config says which bucket to use and how to reach it.
type Config struct {
	// Endpoint is the service's URL: its scheme decides TLS, e.g.
	// https://s3.eu-west-1.amazonaws.com or http://127.0.0.1:9000.
	Endpoint string
	Bucket   string
	// Region is the bucket's region; empty takes AWS_REGION or the shared
	// config file's, else us-east-1. "auto" suits R2.
	Region string
	// Prefix is put before every object name, e.g. "docker_proxy/".
	Prefix string
	// AccessKey and SecretKey sign the requests. Without them, the
	// standard AWS credentials do: AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY, the shared credentials file, or the role of
	// the instance (EC2, ECS, EKS).
	AccessKey, SecretKey string
	// Transport carries the requests; nil uses a default one.
	Transport http.RoundTripper
}

// Validate checks the configuration; its errors never show the secret key.
func (c Config) Validate() error {
	if err := CheckEndpoint(c.Endpoint); err != nil {
		return err
	}
	if err := CheckBucket(c.Bucket); err != nil {
		return err
	}
	if (c.AccessKey == "") != (c.SecretKey == "") {
		return errors.New("s3: " + KeysRule)
	}
	return nil
}

// KeysRule says which of the keys to give.
const KeysRule = "give both access_key and secret_key, or neither (then the environment's AWS credentials, a shared credentials file or the instance's role sign the requests)"

// CheckEndpoint checks that endpoint is an http or https URL with a host
// and nothing after it but an optional "/".
func CheckEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	switch {
	case endpoint == "":
		return errors.New("s3: endpoint is required")
	case err != nil:
		// Not the URL itself, which may hold a password.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("s3: invalid endpoint: %v", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("s3: invalid endpoint '%s': want an http:// or https:// URL", endpoint)
	case u.Host == "" || u.Hostname() == "":
		return fmt.Errorf("s3: invalid endpoint '%s': no host", endpoint)
	case u.User != nil:
		return fmt.Errorf("s3: invalid endpoint '%s': give the keys with access_key and secret_key", u.Redacted())
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("s3: invalid endpoint '%s': want only scheme and host (the bucket goes in bucket)", endpoint)
	}
	return nil
}

// CheckBucket checks a bucket name against S3's rules.
func CheckBucket(bucket string) error {
	if bucket == "" {
		return errors.New("s3: bucket is required")
	}
	if err := checkBucketName(bucket); err != nil {
		return fmt.Errorf("s3: invalid bucket '%s': %v", bucket, err)
	}
	return nil
}

// checkBucketName applies S3's rules for bucket names: 3 to 63 lower-case
// letters, digits, dots and hyphens, starting and ending with a letter or
// digit, no two dots in a row, not an IP address.
func checkBucketName(b string) error {
	if len(b) < 3 || len(b) > 63 {
		return errors.New("a bucket name has 3 to 63 characters")
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '.' || c == '-':
			if i == 0 || i == len(b)-1 {
				return errors.New("a bucket name starts and ends with a letter or digit")
			}
			if c == '.' && b[i-1] == '.' {
				return errors.New("a bucket name has no two dots in a row")
			}
		default:
			return fmt.Errorf("a bucket name has lower-case letters, digits, dots and hyphens only, not %q", c)
		}
	}
	if strings.Count(b, ".") == 3 && strings.Trim(b, "0123456789.") == "" {
		return errors.New("a bucket name is not an IP address")
	}
	return nil
}

// Remote is a blobcache.Remote on one bucket.
type Remote struct {
	client   *s3.Client
	uploader *manager.Uploader
	bucket   string
	prefix   string
}

var _ blobcache.Remote = (*Remote)(nil)

// uploadPart is the size of the parts of a multipart upload (big layers);
// the parts are read from the entry's file, not buffered.
const uploadPart = 16 << 20

// New returns the Remote of cfg. It makes no request: a bucket that cannot
// be reached shows in the store's log when it is first used.
func New(cfg Config) (*Remote, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := []func(*config.LoadOptions) error{
		// Few attempts: a request waits for the remote a few seconds at
		// most, then the upstream answers it.
		config.WithRetryMaxAttempts(2),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	if cfg.Transport != nil {
		opts = append(opts, config.WithHTTPClient(&http.Client{Transport: cfg.Transport}))
	}
	awsCfg, err := config.LoadDefaultConfig(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: %v", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	endpoint, _ := url.Parse(cfg.Endpoint)
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(strings.TrimSuffix(cfg.Endpoint, "/"))
		// Bucket in the path: what MinIO and most S3-compatible
		// services expect; AWS takes it in the host name.
		o.UsePathStyle = !strings.HasSuffix(endpoint.Hostname(), ".amazonaws.com")
		// Checksums only where S3 requires them: some compatible
		// services refuse the newer trailing checksums.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	uploader := manager.NewUploader(client, func(u *manager.Uploader) {
		u.PartSize = uploadPart
		u.Concurrency = 2
	})
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return &Remote{client: client, uploader: uploader, bucket: cfg.Bucket, prefix: prefix}, nil
}

// BlobName is the object name of d's bytes.
func (r *Remote) BlobName(d digest.Digest) string {
	return r.prefix + "blobs/" + string(d.Algorithm()) + "/" + d.Encoded()
}

// TagName is the object name of the record of a tag key.
func (r *Remote) TagName(key string) string {
	sum := sha256.Sum256([]byte(key))
	h := hex.EncodeToString(sum[:])
	return r.prefix + "tags/" + h[:2] + "/" + h + ".json"
}

// scopesKey is the user metadata key of an entry's scopes (S3 stores
// metadata keys in lower case); maxScopes bounds its value, below S3's
// 2 KiB for all user metadata.
const (
	scopesKey = "scopes"
	maxScopes = 1900
)

// Open returns d's body, media type and scopes.
func (r *Remote) Open(ctx context.Context, d digest.Digest) (*blobcache.RemoteEntry, error) {
	out, err := r.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &r.bucket, Key: aws.String(r.BlobName(d))})
	if err != nil {
		return nil, r.fail("GET", d.String(), err)
	}
	size := int64(-1)
	if out.ContentLength != nil {
		size = *out.ContentLength
	}
	return &blobcache.RemoteEntry{
		Info:   blobcache.Info{Digest: d, Size: size, MediaType: aws.ToString(out.ContentType)},
		Scopes: decodeScopes(out.Metadata[scopesKey]),
		Body:   out.Body,
	}, nil
}

// Has reports whether the bucket holds d.
func (r *Remote) Has(ctx context.Context, d digest.Digest) (bool, error) {
	_, err := r.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &r.bucket, Key: aws.String(r.BlobName(d))})
	if err != nil {
		err = r.fail("HEAD", d.String(), err)
		if errors.Is(err, blobcache.ErrNotFound) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// Put uploads an entry. A body that is an io.ReaderAt and io.Seeker (the
// entry's file) is read part by part, never buffered whole.
func (r *Remote) Put(ctx context.Context, info blobcache.Info, scopes []string, body io.Reader) error {
	in := &s3.PutObjectInput{
		Bucket:      &r.bucket,
		Key:         aws.String(r.BlobName(info.Digest)),
		Body:        body,
		ContentType: aws.String(info.MediaType),
	}
	if info.MediaType == "" {
		in.ContentType = aws.String("application/octet-stream")
	}
	if v := encodeScopes(scopes); v != "" {
		in.Metadata = map[string]string{scopesKey: v}
	}
	if _, err := r.uploader.Upload(ctx, in); err != nil {
		return r.fail("PUT", info.Digest.String(), err)
	}
	return nil
}

// maxTagRecord bounds what Tag reads.
const maxTagRecord = 64 << 10

// Tag returns the record of key.
func (r *Remote) Tag(ctx context.Context, key string) (blobcache.Tag, error) {
	out, err := r.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &r.bucket, Key: aws.String(r.TagName(key))})
	if err != nil {
		return blobcache.Tag{}, r.fail("GET", "tag record", err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, maxTagRecord+1))
	if err != nil {
		return blobcache.Tag{}, r.fail("GET", "tag record", err)
	}
	var t blobcache.Tag
	if len(b) > maxTagRecord {
		err = errors.New("too large")
	} else {
		t, err = blobcache.UnmarshalTagRecord(b, key)
	}
	if err != nil {
		return blobcache.Tag{}, fmt.Errorf("s3: bad tag record %s: %v", r.TagName(key), err)
	}
	return t, nil
}

// SetTag stores the record of key.
func (r *Remote) SetTag(ctx context.Context, key string, t blobcache.Tag) error {
	b, err := blobcache.MarshalTagRecord(key, t)
	if err != nil {
		return err
	}
	_, err = r.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &r.bucket, Key: aws.String(r.TagName(key)),
		Body: bytes.NewReader(b), ContentType: aws.String("application/json"),
	})
	if err != nil {
		return r.fail("PUT", "tag record", err)
	}
	return nil
}

// fail turns a client error into one that wraps blobcache.ErrNotFound for
// a missing object, and whose message says what failed without what
// changes from one object to the next (the store logs each condition
// once): the service's error code and message, or the network error.
func (r *Remote) fail(method, what string, err error) error {
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() != 0 { // 0: no answer
		code, msg := "", ""
		var ae smithy.APIError
		if errors.As(err, &ae) {
			code, msg = ae.ErrorCode(), ae.ErrorMessage()
		}
		status := re.HTTPStatusCode()
		if status == http.StatusNotFound && code != "NoSuchBucket" {
			return fmt.Errorf("%w: s3 %s of %s", blobcache.ErrNotFound, method, what)
		}
		return fmt.Errorf("s3 %s in bucket %s: %s (%s, status %d)", method, r.bucket, msg, code, status)
	}
	// A request that got no answer: its *url.Error quotes the URL, with
	// the object's name; the cause alone says what failed.
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("s3 %s: %w", method, ue.Err)
	}
	return fmt.Errorf("s3 %s: %w", method, err)
}

// encodeScopes joins the scopes that fit in S3 user metadata with spaces.
// Scopes are registry URLs and repository names: a space or anything but
// printable ASCII is not one, and is left out.
func encodeScopes(scopes []string) string {
	var b strings.Builder
	for _, sc := range scopes {
		if sc == "" || !printableASCII(sc) || b.Len()+1+len(sc) > maxScopes {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(sc)
	}
	return b.String()
}

func decodeScopes(v string) []string {
	return strings.Fields(v)
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
