//go:build !linux

package blobcache

import (
	"errors"
	"os"
)

// reopen is not available here: SendTo copies through Read instead.
func reopen(*os.File) (*os.File, error) {
	return nil, errors.New("blobcache: cannot reopen an open file on this platform")
}
