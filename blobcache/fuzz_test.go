package blobcache

import (
	"encoding/json"
	"testing"

	"github.com/opencontainers/go-digest"
)

// FuzzParseSidecar: the sidecar loader runs on whatever is on disk at Open;
// it must never panic, and what it accepts must describe the right digest
// and survive a re-encode.
func FuzzParseSidecar(f *testing.F) {
	d := digest.FromString("x")
	good, _ := encodeSidecar(Info{Digest: d, Size: 1, MediaType: "a/b"}, []string{"s"})
	f.Add(good)
	f.Add([]byte(`{"digest":"` + d.String() + `","size":-1}`))
	f.Add([]byte(`{"digest":"` + d.String() + `","size":1,"extra":true}`))
	f.Add([]byte(`{"digest":"` + d.String() + `","size":1}{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		sc, err := parseSidecar(b, d)
		if err != nil {
			return
		}
		if sc.Digest != d || sc.Size < 0 {
			t.Fatalf("accepted %+v", sc)
		}
		scopes := scopeSetMembers(scopeSetKey(sc.Scopes))
		again, err := encodeSidecar(Info{Digest: sc.Digest, Size: sc.Size, MediaType: sc.MediaType}, scopes)
		if err != nil {
			t.Fatal(err)
		}
		sc2, err := parseSidecar(again, d)
		if err != nil || sc2.Size != sc.Size || sc2.MediaType != sc.MediaType || len(sc2.Scopes) != len(scopes) {
			t.Fatalf("re-encode changed %+v into %+v (%v)", sc, sc2, err)
		}
	})
}

// FuzzParseTag: tag files are read lazily from disk; same contract.
func FuzzParseTag(f *testing.F) {
	d := digest.FromString("m")
	good, _ := json.Marshal(tagRecord{Key: "k", Digest: d, Size: 3})
	f.Add(good, "k")
	f.Add(good, "other")
	f.Add([]byte(`{"key":"k","digest":"sha256:../x","size":1}`), "k")
	f.Add([]byte(`{"key":"k","digest":"`+d.String()+`","size":1,"checked":"bad"}`), "k")
	f.Fuzz(func(t *testing.T, b []byte, key string) {
		tag, err := parseTag(b, key)
		if err != nil {
			return
		}
		if tag.Digest.Validate() != nil || tag.Size < 0 {
			t.Fatalf("accepted %+v", tag)
		}
	})
}
