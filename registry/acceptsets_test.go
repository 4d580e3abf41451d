package registry

import (
	"testing"

	"github.com/caddy-dockerproxy/dockerproxy/blobcache"
)

func TestAnswersFor(t *testing.T) {
	const (
		list = "application/vnd.docker.distribution.manifest.list.v2+json"
		idx  = "application/vnd.oci.image.index.v1+json"
		v2   = "application/vnd.docker.distribution.manifest.v2+json"
		oci  = "application/vnd.oci.image.manifest.v1+json"
	)
	key := func(types ...string) string { return acceptKey(types) }
	for _, c := range []struct {
		name     string
		recType  string
		from, to string
		want     bool
	}{
		{"index to a set accepting it", list, key(list, v2), key(v2, list, oci, idx), true},
		{"index to a set not accepting it", list, key(list, v2), key(v2, oci), false},
		{"oci index needs its own type", idx, key(idx, oci), key(list, v2), false},
		{"manifest, first set had every index type", v2, key(list, idx, v2), key(v2), true},
		{"manifest, second set adds an index type", v2, key(v2), key(v2, list), false},
		{"manifest of a type the second set refuses", v2, key(list, idx, v2, oci), key(oci, idx), false},
		{"no media type recorded", "", key(v2), key(v2), false},
	} {
		got := answersFor(blobcache.Tag{MediaType: c.recType}, c.from, c.to)
		if got != c.want {
			t.Errorf("%s: answersFor = %v, want %v", c.name, got, c.want)
		}
	}
}
