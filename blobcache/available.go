package blobcache

// Available reports whether the store can store what it is given now: nil
// while it is open and no recent disk error rests it, else an error that
// wraps ErrUnavailable (and ErrClosed for a closed store). Health checks
// ask it; it touches no disk.
func (s *Store) Available() error { return s.checkAvailable() }
