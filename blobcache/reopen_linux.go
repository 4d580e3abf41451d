//go:build linux

package blobcache

import (
	"fmt"
	"os"
)

// reopen opens f's file again, through /proc, as a new open file with an
// offset of its own; it works even once the file was renamed or removed.
func reopen(f *os.File) (*os.File, error) {
	if f == nil {
		return nil, os.ErrClosed
	}
	return os.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
}
