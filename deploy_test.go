package dockerproxy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"go.yaml.in/yaml/v3"

	dockerproxy "github.com/caddy-dockerproxy/dockerproxy"
	"github.com/caddy-dockerproxy/dockerproxy/internal/testproc"
)

// The deployments under deploy/ are what users copy: these tests hold them
// to the plugin as it is. Every Caddyfile adapts and provisions, every YAML
// file parses, every variable is documented, the kustomize overlays build
// into what the Caddyfiles expect, the systemd unit verifies. The compose
// file runs in the end-to-end suite (test/e2e/deploy.sh).

// deployCaddyfile is one Caddyfile under deploy/, with the environment its
// documentation says to set, and optionally a drop-in of credentials.d.
type deployCaddyfile struct {
	path    string
	env     map[string]string // values; "{TMP}" is a temp dir
	dropIn  string            // copied into credentials.d/ beside the Caddyfile ("" for none)
	secrets map[string]string // files to create under {TMP}: name -> content
	want    []string          // what the adapted JSON must hold
}

func deployCaddyfiles() []deployCaddyfile {
	s3 := map[string]string{
		"DOCKER_PROXY_DOMAIN": "example.com", "DOCKER_PROXY_CACHE_DIR": "{TMP}/cache",
		"DOCKER_PROXY_AUTH_KEY": "0123456789abcdef0123456789abcdef",
		"S3_ENDPOINT":           "http://minio:9000", "S3_BUCKET": "docker-proxy-cache",
		"S3_ACCESS_KEY": "docker-proxy", "S3_SECRET_KEY": "minio-secret-key",
	}
	return []deployCaddyfile{
		{path: "deploy/compose/Caddyfile", env: map[string]string{"DOCKER_PROXY_CACHE_DIR": "{TMP}/cache"},
			want: []string{`"localhost"`, `"docker.localhost"`, `"docker.io":"https://registry-1.docker.io"`}},
		{path: "deploy/compose/Caddyfile", env: map[string]string{
			"DOCKER_PROXY_DOMAIN": "example.com", "DOCKER_PROXY_CACHE_DIR": "{TMP}/cache",
			"DOCKER_PROXY_DOCKER_HUB": "http://127.0.0.1:5000",
			"DOCKERHUB_USER":          "someone", "DOCKERHUB_TOKEN_FILE": "{TMP}/dockerhub_token",
		}, dropIn: "deploy/compose/credentials.d/dockerhub.caddy.example",
			secrets: map[string]string{"dockerhub_token": "dckr_pat_example\n"},
			want:    []string{`"docker.example.com"`, `"credentials":[`, `"docker.io":"http://127.0.0.1:5000"`}},
		{path: "deploy/compose/shared/Caddyfile", env: s3, want: []string{`"s3":{`, `"auth_key":"{env.DOCKER_PROXY_AUTH_KEY}"`}},
		{path: "deploy/compose/shared/Caddyfile.balancer", env: map[string]string{"DOCKER_PROXY_DOMAIN": "example.com"},
			want: []string{`"uri":"` + dockerproxy.HealthPath + `"`, `"docker.example.com"`}},
		{path: "deploy/kubernetes/base/Caddyfile", env: s3, want: []string{`":8080"`, `"domain":"example.com"`}},
		{path: "deploy/kubernetes/base/Caddyfile", env: map[string]string{
			"DOCKER_PROXY_DOMAIN": "example.com", "DOCKER_PROXY_CACHE_DIR": "{TMP}/cache",
			"DOCKER_PROXY_AUTH_KEY": "0123456789abcdef0123456789abcdef", "DOCKERHUB_SECRET_DIR": "{TMP}/dockerhub",
		}, dropIn: "deploy/kubernetes/components/dockerhub-credentials/dockerhub.caddy",
			secrets: map[string]string{"dockerhub/username": "someone\n", "dockerhub/token": "dckr_pat_example\n"},
			want:    []string{`"credentials":[`}},
		{path: "deploy/kubernetes/shared/Caddyfile", env: s3, want: []string{`"s3":{`, `":8080"`}},
		{path: "deploy/systemd/Caddyfile", env: map[string]string{
			"DOCKER_PROXY_DOMAIN": "example.com", "DOCKER_PROXY_CACHE_DIR": "{TMP}/cache",
		}, want: []string{`"docker.example.com"`}},
		{path: "deploy/systemd/Caddyfile", env: map[string]string{
			"DOCKER_PROXY_DOMAIN": "example.com", "DOCKER_PROXY_CACHE_DIR": "{TMP}/cache",
			"DOCKERHUB_USER": "someone", "CREDENTIALS_DIRECTORY": "{TMP}",
		}, dropIn: "deploy/systemd/credentials.d/dockerhub.caddy.example",
			secrets: map[string]string{"dockerhub_token": "dckr_pat_example\n"},
			want:    []string{`"credentials":[`}},
	}
}

// TestDeployCaddyfilesProvision adapts every Caddyfile under deploy/ (in a
// copy, beside the credentials drop-in where one is used) with the
// environment its comments document, and has Caddy provision and validate
// the result: the docker_proxy handler opens its cache, expands its
// placeholders and checks its credentials and shared tier.
func TestDeployCaddyfilesProvision(t *testing.T) {
	tested := map[string]bool{}
	for _, c := range deployCaddyfiles() {
		name := c.path
		if c.dropIn != "" {
			name += "+" + filepath.Base(c.dropIn)
		}
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			tmp := t.TempDir()
			t.Setenv("XDG_DATA_HOME", filepath.Join(tmp, "data"))
			t.Setenv("XDG_CONFIG_HOME", filepath.Join(tmp, "config"))
			for k, v := range c.env {
				t.Setenv(k, strings.ReplaceAll(v, "{TMP}", tmp))
			}
			for name, content := range c.secrets {
				p := filepath.Join(tmp, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			// A copy in its own directory: the relative import of
			// credentials.d finds the drop-in there, or nothing.
			dir := filepath.Join(tmp, "etc")
			copyFile(t, c.path, filepath.Join(dir, filepath.Base(c.path)))
			if c.dropIn != "" {
				copyFile(t, c.dropIn, filepath.Join(dir, "credentials.d", "dockerhub.caddy"))
			}
			cfgJSON := adaptCaddyfile(t, filepath.Join(dir, filepath.Base(c.path)))
			for _, w := range c.want {
				if !strings.Contains(string(cfgJSON), w) {
					t.Errorf("the adapted config has no %s:\n%s", w, cfgJSON)
				}
			}
			var cfg caddy.Config
			if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
				t.Fatal(err)
			}
			if err := caddy.Validate(&cfg); err != nil {
				t.Fatalf("provisioning %s: %v", c.path, err)
			}
		})
		tested[c.path] = true
	}
	// Every Caddyfile under deploy/ is in the table.
	for _, p := range deployFiles(t, func(p string) bool { return strings.HasPrefix(filepath.Base(p), "Caddyfile") }) {
		if !tested[p] {
			t.Errorf("%s is not tested: add it to deployCaddyfiles", p)
		}
	}
}

// adaptCaddyfile adapts the Caddyfile at path to JSON. A warning (such as
// "not formatted") fails the test: users copy these files.
func adaptCaddyfile(t *testing.T, path string) []byte {
	t.Helper()
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": path})
	if err != nil {
		t.Fatalf("adapting %s: %v", path, err)
	}
	for _, w := range warnings {
		t.Errorf("adapting %s: warning: %s:%d: %s", path, w.File, w.Line, w.Message)
	}
	return cfg
}

// TestDeployCaddyfilesNeedTheirEnvironment: the Kubernetes and systemd
// Caddyfiles have no default domain and the shared ones no default key; a
// missing variable stops them at provisioning, not with a proxy that serves
// a wrong host table or seals tokens with an empty key.
func TestDeployCaddyfilesNeedTheirEnvironment(t *testing.T) {
	for _, c := range []struct{ path, unset, wantErr string }{
		{"deploy/kubernetes/shared/Caddyfile", "DOCKER_PROXY_AUTH_KEY", "auth_key"},
		{"deploy/kubernetes/shared/Caddyfile", "S3_SECRET_KEY", "secret_key"},
		{"deploy/compose/shared/Caddyfile", "DOCKER_PROXY_AUTH_KEY", "auth_key"},
		{"deploy/systemd/Caddyfile", "DOCKER_PROXY_DOMAIN", "domain"},
	} {
		t.Run(strings.ReplaceAll(c.path, "/", "_")+"_without_"+c.unset, func(t *testing.T) {
			tmp := t.TempDir()
			t.Setenv("XDG_DATA_HOME", filepath.Join(tmp, "data"))
			t.Setenv("XDG_CONFIG_HOME", filepath.Join(tmp, "config"))
			for _, dc := range deployCaddyfiles() {
				if dc.path == c.path && dc.dropIn == "" {
					for k, v := range dc.env {
						t.Setenv(k, strings.ReplaceAll(v, "{TMP}", tmp))
					}
				}
			}
			t.Setenv(c.unset, "")
			os.Unsetenv(c.unset)
			body, err := os.ReadFile(c.path)
			if err != nil {
				t.Fatal(err)
			}
			cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": c.path})
			if err == nil {
				var cfg caddy.Config
				if err = json.Unmarshal(cfgJSON, &cfg); err != nil {
					t.Fatal(err)
				}
				err = caddy.Validate(&cfg)
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("without %s: %v, want an error about %s", c.unset, err, c.wantErr)
			}
		})
	}
}

// TestDeployYAMLParses parses every YAML file under deploy/, every
// document of it, and holds the compose files to their shape.
func TestDeployYAMLParses(t *testing.T) {
	files := deployFiles(t, func(p string) bool { return strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml") })
	if len(files) < 10 {
		t.Fatalf("only %d YAML files under deploy/: %v", len(files), files)
	}
	for _, p := range files {
		docs := yamlDocuments(t, p)
		if len(docs) == 0 {
			t.Errorf("%s: no YAML document", p)
		}
		if strings.HasPrefix(filepath.Base(p), "compose") {
			var compose struct {
				Services map[string]struct {
					Image string `yaml:"image"`
				} `yaml:"services"`
			}
			if err := docs[0].Decode(&compose); err != nil || len(compose.Services) == 0 {
				t.Errorf("%s: not a compose file with services: %v", p, err)
			}
		}
	}
}

// TestDeployComposeConfig has docker-compose (Debian's, the oldest that
// users run) check each compose file against its schema, with the
// variables its README says to set: unknown keys, wrong types and a
// missing required variable fail.
func TestDeployComposeConfig(t *testing.T) {
	compose := testproc.Require(t, lookTool("docker-compose"), "DOCKER_PROXY_REQUIRE_COMPOSE", "docker-compose (Debian's docker-compose)")
	for _, c := range []struct {
		files []string
		env   string
	}{
		{[]string{"deploy/compose/compose.yaml"}, ""},
		{[]string{"deploy/compose/compose.yaml", "deploy/compose/compose.credentials.yaml"}, "DOCKERHUB_USER=someone\n"},
		{[]string{"deploy/compose/shared/compose.yaml"},
			"DOCKER_PROXY_AUTH_KEY=0123456789abcdef0123456789abcdef\nS3_ACCESS_KEY=docker-proxy\nS3_SECRET_KEY=minio-secret-key\n"},
	} {
		envFile := filepath.Join(t.TempDir(), "env")
		if err := os.WriteFile(envFile, []byte(c.env), 0o600); err != nil {
			t.Fatal(err)
		}
		args := []string{"--env-file", envFile}
		for _, f := range c.files {
			args = append(args, "-f", f)
		}
		cmd := exec.Command(compose, append(args, "config", "-q")...)
		// Only the env file speaks: none of the test's environment.
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if c.env == "" {
			continue
		}
		// Without the variables it requires, it refuses to start.
		empty := filepath.Join(t.TempDir(), "env")
		if err := os.WriteFile(empty, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		args[1] = empty
		cmd = exec.Command(compose, append(args, "config", "-q")...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "set ") {
			t.Errorf("%s without its variables: %v %s, want a refusal naming what to set", c.files[len(c.files)-1], err, out)
		}
	}
}

// yamlDocuments parses every document of the YAML file at path.
func yamlDocuments(t *testing.T, path string) []*yaml.Node {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseYAMLDocuments(t, path, b)
}

func parseYAMLDocuments(t *testing.T, what string, b []byte) []*yaml.Node {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		docs = append(docs, &n)
	}
}

// variableRef finds the variables a file takes from the environment:
// Caddyfile {$VAR} and {$VAR:default}, compose ${VAR}, ${VAR:-default} and
// ${VAR:?message}, and Caddy's runtime placeholder {env.VAR}.
var variableRef = regexp.MustCompile(`\{\$([A-Za-z_][A-Za-z0-9_]*)|\$\{([A-Za-z_][A-Za-z0-9_]*)|\{env\.([A-Za-z_][A-Za-z0-9_]*)\}`)

// TestDeployVariablesDocumented: every variable that a file under
// deploy/<dir>/ references is documented, as `NAME`, in deploy/<dir>/README.md.
func TestDeployVariablesDocumented(t *testing.T) {
	files := deployFiles(t, func(p string) bool { return filepath.Base(p) != "README.md" })
	found := 0
	for _, p := range files {
		parts := strings.Split(filepath.ToSlash(p), "/")
		if len(parts) < 3 {
			continue // deploy/README.md and the like
		}
		docPath := filepath.Join("deploy", parts[1], "README.md")
		doc, err := os.ReadFile(docPath)
		if err != nil {
			t.Fatalf("%s needs its documentation: %v", p, err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range variableRef.FindAllStringSubmatch(string(b), -1) {
			name := m[1] + m[2] + m[3]
			found++
			if !bytes.Contains(doc, []byte("`"+name+"`")) {
				t.Errorf("%s references %s, which %s does not document (as `%s`)", p, name, docPath, name)
			}
		}
	}
	if found < 20 {
		t.Errorf("found only %d variable references under deploy/: is the pattern right?", found)
	}
}

// TestDeployKustomizeBuilds builds each Kubernetes deployment with
// kustomize, and checks what the Caddyfiles and the handler expect of it:
// probes on HealthPath at the port Caddy listens on, the Caddyfile in its
// ConfigMap, secrets from Secrets, the cache's volume.
func TestDeployKustomizeBuilds(t *testing.T) {
	kustomize := testproc.Require(t, lookTool("kustomize"), "DOCKER_PROXY_REQUIRE_KUSTOMIZE",
		"kustomize, on PATH or in $GOPATH/bin (go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.1)")
	withCredentials := t.TempDir()
	// kustomize takes bases by relative paths only.
	abs, err := filepath.Abs("deploy/kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(withCredentials, abs)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(withCredentials, "kustomization.yaml"), []byte(
		"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - "+rel+"/single\n"+
			"components:\n  - "+rel+"/components/dockerhub-credentials\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, dir, caddyfile string
		replicas             int
		pvc, credentials     bool
		secretEnv            []string
	}{
		{"single", "deploy/kubernetes/single", "deploy/kubernetes/base/Caddyfile", 1, true, false, []string{"DOCKER_PROXY_AUTH_KEY"}},
		{"shared", "deploy/kubernetes/shared", "deploy/kubernetes/shared/Caddyfile", 3, false, false,
			[]string{"DOCKER_PROXY_AUTH_KEY", "S3_ACCESS_KEY", "S3_SECRET_KEY"}},
		{"single+dockerhub-credentials", withCredentials, "deploy/kubernetes/base/Caddyfile", 1, true, true, []string{"DOCKER_PROXY_AUTH_KEY"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(kustomize, "build", c.dir)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("kustomize build %s: %v\n%s", c.dir, err, stderr.String())
			}
			objs := kubeObjects(t, out)
			dep, ok := objs["Deployment/docker-proxy"]
			if !ok {
				t.Fatalf("no Deployment docker-proxy in %v", slices.Sorted(maps.Keys(objs)))
			}
			var d kubeDeployment
			if err := dep.Decode(&d); err != nil {
				t.Fatal(err)
			}
			if d.Spec.Replicas != c.replicas {
				t.Errorf("replicas %d, want %d", d.Spec.Replicas, c.replicas)
			}
			ctr := d.Spec.Template.Spec.Containers[0]
			ports := map[string]int{}
			for _, p := range ctr.Ports {
				ports[p.Name] = p.ContainerPort
			}
			for name, p := range map[string]*kubeProbe{"readiness": ctr.ReadinessProbe, "liveness": ctr.LivenessProbe} {
				if p == nil || p.HTTPGet.Path != dockerproxy.HealthPath || ports[p.HTTPGet.Port] != 8080 {
					t.Errorf("%s probe %+v, want GET %s on the port Caddy listens on (8080)", name, p, dockerproxy.HealthPath)
				}
			}
			env := map[string]string{}
			for _, e := range ctr.Env {
				env[e.Name] = e.ValueFrom.SecretKeyRef.Name
			}
			for _, name := range c.secretEnv {
				if env[name] != "docker-proxy" {
					t.Errorf("%s does not come from the Secret docker-proxy: %v", name, env)
				}
			}

			// The Caddyfile ConfigMap holds the file, and is mounted
			// where the container reads it.
			volumes := map[string]kubeVolume{}
			for _, v := range d.Spec.Template.Spec.Volumes {
				volumes[v.Name] = v
			}
			cmName := volumes["caddyfile"].ConfigMap.Name
			var cm struct {
				Data map[string]string `yaml:"data"`
			}
			if n, ok := objs["ConfigMap/"+cmName]; !ok || n.Decode(&cm) != nil {
				t.Fatalf("the caddyfile volume names ConfigMap %q, which the build does not hold", cmName)
			}
			want, err := os.ReadFile(c.caddyfile)
			if err != nil {
				t.Fatal(err)
			}
			if cm.Data["Caddyfile"] != string(want) {
				t.Errorf("ConfigMap %s does not hold %s", cmName, c.caddyfile)
			}
			mounts := map[string]string{}
			for _, m := range ctr.VolumeMounts {
				mounts[m.MountPath] = m.Name
			}
			if mounts["/etc/caddy/Caddyfile"] != "caddyfile" || mounts["/var/cache/docker_proxy"] != "cache" {
				t.Errorf("mounts %v: want the Caddyfile at /etc/caddy/Caddyfile and the cache at /var/cache/docker_proxy", mounts)
			}
			_, hasPVC := objs["PersistentVolumeClaim/docker-proxy"]
			cachePVC := volumes["cache"].PersistentVolumeClaim.ClaimName
			if c.pvc != (hasPVC && cachePVC == "docker-proxy") {
				t.Errorf("PVC in the build %v, cache on claim %q; want a PVC for the cache: %v", hasPVC, cachePVC, c.pvc)
			}
			if got := mounts["/etc/caddy/credentials.d"] == "credentials" && volumes["dockerhub"].Secret.SecretName == "dockerhub"; got != c.credentials {
				t.Errorf("credentials drop-in and Secret mounted: %v, want %v (mounts %v)", got, c.credentials, mounts)
			}
		})
	}
}

type kubeProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

type kubeVolume struct {
	Name      string `yaml:"name"`
	ConfigMap struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
	Secret struct {
		SecretName string `yaml:"secretName"`
	} `yaml:"secret"`
	PersistentVolumeClaim struct {
		ClaimName string `yaml:"claimName"`
	} `yaml:"persistentVolumeClaim"`
}

type kubeDeployment struct {
	Spec struct {
		Replicas int `yaml:"replicas"`
		Template struct {
			Spec struct {
				Containers []struct {
					Ports []struct {
						Name          string `yaml:"name"`
						ContainerPort int    `yaml:"containerPort"`
					} `yaml:"ports"`
					Env []struct {
						Name      string `yaml:"name"`
						ValueFrom struct {
							SecretKeyRef struct {
								Name string `yaml:"name"`
							} `yaml:"secretKeyRef"`
						} `yaml:"valueFrom"`
					} `yaml:"env"`
					ReadinessProbe *kubeProbe `yaml:"readinessProbe"`
					LivenessProbe  *kubeProbe `yaml:"livenessProbe"`
					VolumeMounts   []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []kubeVolume `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// kubeObjects indexes a kustomize build's objects by "Kind/name".
func kubeObjects(t *testing.T, out []byte) map[string]*yaml.Node {
	t.Helper()
	objs := map[string]*yaml.Node{}
	for _, n := range parseYAMLDocuments(t, "kustomize output", out) {
		var meta struct {
			Kind     string `yaml:"kind"`
			Metadata struct {
				Name string `yaml:"name"`
			} `yaml:"metadata"`
		}
		if err := n.Decode(&meta); err != nil {
			t.Fatal(err)
		}
		objs[meta.Kind+"/"+meta.Metadata.Name] = n
	}
	return objs
}

// TestDeploySystemdUnitVerifies has systemd check the unit and its
// credentials drop-in, installed in a scratch root beside the system's own
// units: no unknown key, section or value, nothing it would ignore.
func TestDeploySystemdUnitVerifies(t *testing.T) {
	analyze := testproc.Require(t, lookTool("systemd-analyze"), "DOCKER_PROXY_REQUIRE_SYSTEMD", "systemd-analyze (Debian's systemd)")
	root := t.TempDir()
	units := filepath.Join(root, "etc/systemd/system")
	copyFile(t, "deploy/systemd/docker-proxy.service", filepath.Join(units, "docker-proxy.service"))
	copyFile(t, "deploy/systemd/docker-proxy.service.d/credentials.conf", filepath.Join(units, "docker-proxy.service.d/credentials.conf"))
	// The targets it names come from the system; the binary is a stand-in.
	if err := os.CopyFS(filepath.Join(root, "usr/lib/systemd/system"), os.DirFS("/usr/lib/systemd/system")); err != nil {
		t.Skipf("the system's units are not readable: %v", err)
	}
	bin := filepath.Join(root, "usr/local/bin/caddy")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", "--root="+root, "/etc/systemd/system/docker-proxy.service").CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// deployFiles lists the files under deploy/ that keep says to keep, sorted.
func deployFiles(t *testing.T, keep func(path string) bool) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir("deploy", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && keep(p) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// lookTool finds a program on PATH or in $GOPATH/bin ("" if neither).
func lookTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return ""
	}
	p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", name)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}
