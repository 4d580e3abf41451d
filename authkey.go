package dockerproxy

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
)

// The key that seals /v2/auth tokens: configured, or generated once and
// kept in Caddy's data directory.

// authKey returns the configured key, or a random one kept in Caddy's data
// directory, so that tokens outlive restarts and every instance sharing
// that directory accepts the others' tokens.
func (h *Handler) authKey(repl *caddy.Replacer) ([]byte, error) {
	if h.AuthKey != "" {
		return []byte(repl.ReplaceKnown(h.AuthKey, "")), nil
	}
	path := filepath.Join(caddy.AppDataDir(), "docker_proxy", "auth.key")
	if key, err := os.ReadFile(path); err == nil && len(key) >= 32 {
		return key, nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading auth key: %v", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("storing auth key: %v", err)
	}
	// Create exclusively: if another instance won the race, use its key.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("storing auth key: %v", err)
	}
	_, werr := f.Write(key)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("storing auth key: %v", werr)
	}
	return key, nil
}
