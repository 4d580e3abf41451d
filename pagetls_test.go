package dockerproxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-dockerproxy/dockerproxy/internal/testupstream"
)

// testCA issues the certificates of a TLS test: the server's, and
// clients' for client_auth.
type testCA struct {
	t    *testing.T
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "docker_proxy test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{t: t, cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate and key in PEM for a server name or, with
// client set, a client.
func (ca *testCA) issue(name string, client bool) (certPEM, keyPEM []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// TestPageTellsOfClientCertificates: on a site that verifies client
// certificates, the page a browser got with one says that clients need
// one, with the files for Docker, podman, containerd and k3s; where the
// certificate is only requested, not verified, it does not.
func TestPageTellsOfClientCertificates(t *testing.T) {
	up := testupstream.Start(t, testupstream.Options{})
	dir := t.TempDir()
	ca := newTestCA(t)
	serverCert, serverKey := ca.issue("docker.example.test", false)
	clientCert, clientKey := ca.issue("a client", true)
	files := map[string][]byte{"ca.pem": ca.pem, "server.pem": serverCert, "server.key": serverKey}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	clientPair, err := tls.X509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)

	for _, c := range []struct {
		mode       string
		wantNotice bool
	}{
		{"require_and_verify", true},
		{"request", false},
	} {
		t.Run(c.mode, func(t *testing.T) {
			e := startProxy(t, up, strings.NewReplacer("CERTS", dir, "MODE", c.mode).Replace(`https://docker.example.test:{PORT} {
	tls CERTS/server.pem CERTS/server.key {
		client_auth {
			mode MODE
			trust_pool file CERTS/ca.pem
		}
	}
	docker_proxy {
		domain example.test
		upstream docker.io {UPSTREAM}
		cache off
	}
}`))
			tr := e.transport.Clone()
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{clientPair}}
			req, _ := http.NewRequest("GET", "https://docker.example.test:"+e.port+"/", nil)
			req.Header.Set("Accept", browserAccept)
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body := string(b)
			if resp.StatusCode != 200 || !strings.Contains(body, `&#34;registry-mirrors&#34;: [&#34;https://docker.example.test:`+e.port+`&#34;]`) {
				t.Fatalf("browser GET / over TLS = %d: %s", resp.StatusCode, grepLines(body, "registry-mirrors"))
			}
			notices := []string{
				"<h2>Client certificate</h2>",
				"/etc/docker/certs.d/docker.example.test:" + e.port + "/",
				"/etc/containers/certs.d/docker.example.test:" + e.port + "/",
				`client = [[&#34;/etc/containerd/certs.d/docker.io/client.cert&#34;, &#34;/etc/containerd/certs.d/docker.io/client.key&#34;]]`,
				"cert_file: /etc/rancher/k3s/client.cert",
			}
			for _, n := range notices {
				if strings.Contains(body, n) != c.wantNotice {
					t.Errorf("client_auth mode %s: the page has %q: %v, want %v", c.mode, n, !c.wantNotice, c.wantNotice)
				}
			}
		})
	}
}
