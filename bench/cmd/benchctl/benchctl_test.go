package main

import (
	"archive/tar"
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestTarLayerIsExactSizeAndValid(t *testing.T) {
	for _, size := range []int64{4096, 1 << 20} {
		var b bytes.Buffer
		n, err := io.Copy(&b, newTarLayer(size, [32]byte{1}, "f.bin"))
		if err != nil || n != size {
			t.Fatalf("size %d: wrote %d, %v", size, n, err)
		}
		tr := tar.NewReader(&b)
		h, err := tr.Next()
		if err != nil || h.Name != "f.bin" || h.Size != size-1536 {
			t.Fatalf("size %d: header %+v, %v", size, h, err)
		}
		if m, _ := io.Copy(io.Discard, tr); m != size-1536 {
			t.Fatalf("size %d: body %d", size, m)
		}
		if _, err := tr.Next(); err != io.EOF {
			t.Fatalf("size %d: want end of archive, got %v", size, err)
		}
	}
}

func TestClassify(t *testing.T) {
	for path, want := range map[string]string{
		"/v2/":                            "GET base",
		"/v2/a/b/manifests/v1":            "GET manifest-tag",
		"/v2/a/manifests/sha256:" + hex64: "GET manifest-digest",
		"/v2/a/b/c/blobs/sha256:" + hex64: "GET blob",
		"/v2/a/blobs/uploads/":            "GET other",
		"/v2/a/tags/list":                 "GET other",
	} {
		if got := classify(httptest.NewRequest(http.MethodGet, path, nil)); got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
}

var hex64 = strings.Repeat("ab", 32)

func TestSamples(t *testing.T) {
	s := samples{}
	for _, v := range []float64{3, 1, 2} {
		s.add("a", v)
	}
	s.add("b", 4)
	s.add("b", 2)
	if m, _ := s.med("a"); m != 2 {
		t.Errorf("median a = %v", m)
	}
	if m, _ := s.med("b"); m != 3 {
		t.Errorf("median b = %v", m)
	}
	if r, ok := s.ratio("a", "b"); !ok || r != 2.0/3 {
		t.Errorf("ratio = %v %v", r, ok)
	}
	if _, ok := s.ratio("a", "missing"); ok {
		t.Error("ratio with a missing cell")
	}
	if got := s.cell("a", fInt); got != "2 (1–3)" {
		t.Errorf("cell = %q", got)
	}
}

func TestRotateVisitsEachFirst(t *testing.T) {
	ss := []*Server{{Key: "a"}, {Key: "b"}, {Key: "c"}}
	for rep, first := range []string{"a", "b", "c", "a"} {
		r := rotate(ss, rep)
		if len(r) != 3 || r[0].Key != first {
			t.Errorf("rep %d: first %s", rep, r[0].Key)
		}
	}
}

func TestTargetVerdicts(t *testing.T) {
	h := &H{}
	h.target("1", "x", 0.96, true, ">=", 0.95, fX)
	h.target("2", "y", 1.2, true, "<=", 1.1, fX)
	h.target("6", "z", 0, false, "==", 1, fInt)
	want := []string{"pass", "**miss**", "n/a"}
	for i, w := range want {
		if h.targets[i].Result != w {
			t.Errorf("target %d: %q, want %q", i, h.targets[i].Result, w)
		}
	}
}

// TestKeptScaleSection: regenerating the document keeps the section that
// bench/scale/run wrote, and only that.
func TestKeptScaleSection(t *testing.T) {
	doc := "# Benchmarks\nold numbers\n\n<!-- scale:begin -->\n## Scale\n| a |\n<!-- scale:end -->\n"
	if got, want := keptScaleSection(doc), "\n<!-- scale:begin -->\n## Scale\n| a |\n<!-- scale:end -->\n"; got != want {
		t.Fatalf("kept %q, want %q", got, want)
	}
	if got := keptScaleSection("# Benchmarks\nno scale section\n"); got != "" {
		t.Fatalf("kept %q from a document without the section", got)
	}
}
