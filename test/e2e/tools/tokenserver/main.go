// Command tokenserver is the end-to-end suite's own token server for a
// distribution registry configured with "auth: token". It implements the
// Docker registry token protocol (GET <realm>?service=..&scope=..) with JWTs
// signed by an ECDSA P-256 key whose self-signed certificate goes into the
// registry's auth.token.rootcertbundle. The certificate travels in the JWT's
// x5c header, which distribution v2 and v3 both verify against that bundle.
//
// Policy, kept deliberately small:
//   - anyone (no credentials) gets "pull" on every repository that does not
//     start with one of the -private prefixes;
//   - a pull-user (-user name:password) also gets "pull" on private ones;
//   - the admin (-admin name:password) gets every action it asks for
//     (the suite pushes its images with it);
//   - wrong credentials get 401, as a real token server answers a failed
//     "docker login".
//
// Usage:
//
//	tokenserver -gen -key K -cert C            # write a key and a certificate, exit
//	tokenserver -addr 127.0.0.1:P -key K -cert C -issuer I -service S \
//	    -admin a:b -user u:p -private private/
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	var (
		gen      = flag.Bool("gen", false, "generate -key and -cert, then exit")
		addr     = flag.String("addr", "127.0.0.1:0", "listen address")
		keyFile  = flag.String("key", "", "PEM EC private key")
		certFile = flag.String("cert", "", "PEM certificate of the key (rootcertbundle)")
		issuer   = flag.String("issuer", "e2e-token-issuer", "JWT iss (registry auth.token.issuer)")
		service  = flag.String("service", "e2e-registry", "expected service, JWT aud (registry auth.token.service)")
		admin    = flag.String("admin", "", "name:password granted every action")
		user     = flag.String("user", "", "name:password granted pull on private repositories")
		private  = flag.String("private", "private/", "comma-separated repository prefixes that need credentials")
		ttl      = flag.Duration("ttl", 5*time.Minute, "token lifetime")
	)
	flag.Parse()
	if *keyFile == "" || *certFile == "" {
		log.Fatal("-key and -cert are required")
	}
	if *gen {
		if err := generate(*keyFile, *certFile); err != nil {
			log.Fatal(err)
		}
		return
	}
	ts, err := load(*keyFile, *certFile)
	if err != nil {
		log.Fatal(err)
	}
	ts.issuer, ts.service, ts.ttl = *issuer, *service, *ttl
	ts.admin, ts.user = splitCred(*admin), splitCred(*user)
	for _, p := range strings.Split(*private, ",") {
		if p = strings.TrimSpace(p); p != "" {
			ts.private = append(ts.private, p)
		}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("token server listening on %s", ln.Addr())
	srv := &http.Server{Handler: ts, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.Serve(ln))
}

type cred struct{ name, pass string }

func splitCred(s string) *cred {
	if s == "" {
		return nil
	}
	n, p, ok := strings.Cut(s, ":")
	if !ok {
		log.Fatalf("credential %q: want name:password", s)
	}
	return &cred{n, p}
}

func (c *cred) match(n, p string) bool {
	return c != nil &&
		subtle.ConstantTimeCompare([]byte(c.name), []byte(n)) == 1 &&
		subtle.ConstantTimeCompare([]byte(c.pass), []byte(p)) == 1
}

type tokenServer struct {
	key     *ecdsa.PrivateKey
	certDER []byte
	issuer  string
	service string
	ttl     time.Duration
	admin   *cred
	user    *cred
	private []string
}

func generate(keyFile, certFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "e2e token signer"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func load(keyFile, certFile string) (*tokenServer, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("key is not ECDSA")
	}
	return &tokenServer{key: key, certDER: pair.Certificate[0]}, nil
}

type access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

func (ts *tokenServer) isPrivate(repo string) bool {
	for _, p := range ts.private {
		if strings.HasPrefix(repo, p) {
			return true
		}
	}
	return false
}

func (ts *tokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	who := "anonymous"
	isAdmin, isUser := false, false
	if n, p, ok := r.BasicAuth(); ok {
		switch {
		case ts.admin.match(n, p):
			isAdmin, who = true, n
		case ts.user.match(n, p):
			isUser, who = true, n
		default:
			log.Printf("%s %s: 401 bad credentials for %q", r.Method, r.URL, n)
			w.Header().Set("WWW-Authenticate", `Basic realm="e2e token server"`)
			http.Error(w, `{"details":"incorrect username or password"}`, http.StatusUnauthorized)
			return
		}
	}
	if s := q.Get("service"); s != "" && s != ts.service {
		log.Printf("%s %s: 400 unknown service %q", r.Method, r.URL, s)
		http.Error(w, `{"details":"unknown service"}`, http.StatusBadRequest)
		return
	}
	var granted []access
	for _, scope := range q["scope"] {
		// Several scopes may also arrive space-separated in one parameter.
		for _, sc := range strings.Fields(scope) {
			parts := strings.Split(sc, ":")
			if len(parts) < 3 {
				continue
			}
			typ, actions := parts[0], strings.Split(parts[len(parts)-1], ",")
			name := strings.Join(parts[1:len(parts)-1], ":")
			if typ != "repository" {
				continue
			}
			var ok []string
			for _, a := range actions {
				switch {
				case isAdmin:
					ok = append(ok, a)
				case a == "pull" && (!ts.isPrivate(name) || isUser):
					ok = append(ok, a)
				}
			}
			granted = append(granted, access{Type: typ, Name: name, Actions: nonNil(ok)})
		}
	}
	tok, err := ts.sign(who, granted)
	if err != nil {
		log.Printf("sign: %v", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	log.Printf("%s %s: 200 token for %s granting %s", r.Method, r.URL, who, describe(granted))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"token":        tok,
		"access_token": tok,
		"expires_in":   int(ts.ttl.Seconds()),
		"issued_at":    time.Now().UTC().Format(time.RFC3339),
	})
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func describe(g []access) string {
	var b []string
	for _, a := range g {
		b = append(b, fmt.Sprintf("%s:%s:%s", a.Type, a.Name, strings.Join(a.Actions, ",")))
	}
	if len(b) == 0 {
		return "(nothing)"
	}
	return strings.Join(b, " ")
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// sign builds an ES256 JWS in compact form.
func (ts *tokenServer) sign(sub string, granted []access) (string, error) {
	now := time.Now()
	jti := make([]byte, 12)
	rand.Read(jti)
	hdr, err := json.Marshal(map[string]any{
		"typ": "JWT",
		"alg": "ES256",
		"x5c": []string{base64.StdEncoding.EncodeToString(ts.certDER)},
	})
	if err != nil {
		return "", err
	}
	if granted == nil {
		granted = []access{}
	}
	claims, err := json.Marshal(map[string]any{
		"iss":    ts.issuer,
		"sub":    sub,
		"aud":    ts.service,
		"exp":    now.Add(ts.ttl).Unix(),
		"nbf":    now.Add(-time.Minute).Unix(),
		"iat":    now.Unix(),
		"jti":    b64(jti),
		"access": granted,
	})
	if err != nil {
		return "", err
	}
	signingInput := b64(hdr) + "." + b64(claims)
	sum := sha256.Sum256([]byte(signingInput))
	r, s, err := ecdsa.Sign(rand.Reader, ts.key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signingInput + "." + b64(sig), nil
}
