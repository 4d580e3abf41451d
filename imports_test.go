package dockerproxy

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// corePackages know nothing of Caddy (see ARCHITECTURE.md): they take
// *http.Request, http.ResponseWriter, *zap.Logger and plain config structs,
// so each is testable and usable alone. Only the root package adapts them.
var corePackages = []string{"./registry/...", "./tokenauth/...", "./blobcache/...", "./netguard/...", "./helppage/...", "./accounts/..."}

// TestCorePackagesImportNoCaddy checks that the core packages, and their
// tests, import nothing of Caddy and not the root package, transitively.
// It asks the go command for the import graph and names the chain that
// leads to each offending import.
func TestCorePackagesImportNoCaddy(t *testing.T) {
	// go test puts its own GOROOT/bin first on the test's PATH.
	gocmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list imports: %v", err)
	}
	args := append([]string{"list", "-deps", "-test", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}"}, corePackages...)
	cmd := exec.Command(gocmd, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}

	// Test variants print as "path [pkg.test]", with a space: split each
	// line on the spaces that separate whole import paths only.
	imports := map[string][]string{} // package -> what it imports
	var order []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		fields := splitImportPaths(sc.Text())
		if len(fields) == 0 {
			continue
		}
		imports[fields[0]] = fields[1:]
		order = append(order, fields[0])
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	modulePath := goListModulePath(t, gocmd)

	forbidden := func(p string) bool {
		p = basePath(p)
		return strings.HasPrefix(p, "github.com/caddyserver/") || p == modulePath
	}
	// Roots: the core packages, their test variants and test binaries.
	var roots []string
	for _, p := range order {
		if b := basePath(p); strings.HasPrefix(b, modulePath+"/") && isCore(strings.TrimPrefix(b, modulePath+"/")) {
			roots = append(roots, p)
		}
	}
	if len(roots) == 0 {
		t.Fatalf("go list reported none of %v", corePackages)
	}
	reported := map[string]bool{} // one chain per core package is enough
	for _, root := range roots {
		chain := findImport(imports, root, forbidden)
		if chain == nil {
			continue
		}
		bad := basePath(chain[len(chain)-1])
		if key := coreName(basePath(root)) + " " + bad; !reported[key] {
			reported[key] = true
			t.Errorf("%s imports %s (via %s)", root, bad, strings.Join(chain, " -> "))
		}
	}
}

// coreName strips the suffix of a test binary (pkg.test) or of an external
// test package (pkg_test).
func coreName(p string) string {
	return strings.TrimSuffix(strings.TrimSuffix(p, ".test"), "_test")
}

// splitImportPaths splits a line of import paths in which a test variant
// is written "path [pkg.test]".
func splitImportPaths(line string) []string {
	var out []string
	for _, f := range strings.Fields(line) {
		if strings.HasPrefix(f, "[") && len(out) > 0 {
			out[len(out)-1] += " " + f
			continue
		}
		out = append(out, f)
	}
	return out
}

// basePath strips a test variant's " [pkg.test]" suffix.
func basePath(p string) string {
	if i := strings.IndexByte(p, ' '); i >= 0 {
		return p[:i]
	}
	return p
}

func isCore(rel string) bool {
	rel = coreName(rel)
	for _, pattern := range corePackages {
		dir := strings.TrimSuffix(strings.TrimPrefix(pattern, "./"), "/...")
		if rel == dir || strings.HasPrefix(rel, dir+"/") {
			return true
		}
	}
	return false
}

// findImport returns the shortest import chain from root to a package
// that bad accepts, or nil.
func findImport(imports map[string][]string, root string, bad func(string) bool) []string {
	prev := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, q := range imports[p] {
			if _, seen := prev[q]; seen {
				continue
			}
			prev[q] = p
			if bad(q) {
				chain := []string{q}
				for at := p; at != ""; at = prev[at] {
					chain = append([]string{at}, chain...)
				}
				return chain
			}
			queue = append(queue, q)
		}
	}
	return nil
}

func goListModulePath(t *testing.T, gocmd string) string {
	t.Helper()
	out, err := exec.Command(gocmd, "list", "-m", "-f", "{{.Path}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	return strings.TrimSpace(string(out))
}
