//go:build linux

package blobcache

import (
	"io/fs"
	"syscall"
	"time"
)

// accessTime returns the file's atime, where Get writes recency back.
func accessTime(fi fs.FileInfo) time.Time {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return time.Unix(st.Atim.Sec, st.Atim.Nsec)
	}
	return time.Time{}
}
