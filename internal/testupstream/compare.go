package testupstream

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// SameImage reports how an image a client pulled differs from the one
// pushed: manifest digest, config bytes, and every layer's bytes hashed
// against its digest (so a layer served wrong is caught, not only its
// name). nil means no difference.
func SameImage(got, want v1.Image) error {
	gd, err := got.Digest()
	if err != nil {
		return err
	}
	wd, err := want.Digest()
	if err != nil {
		return err
	}
	if gd != wd {
		return fmt.Errorf("manifest digest %s, want %s", gd, wd)
	}
	gc, err := got.RawConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	wc, _ := want.RawConfigFile()
	if !bytes.Equal(gc, wc) {
		return fmt.Errorf("config differs")
	}
	layers, err := got.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		d, _ := l.Digest()
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d, err)
		}
		h := sha256.New()
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", d, err)
		}
		if sum := "sha256:" + hex.EncodeToString(h.Sum(nil)); sum != d.String() {
			return fmt.Errorf("layer %s: bytes hash to %s", d, sum)
		}
	}
	return nil
}
