package accounts

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// addresses keeps the failures of client addresses, to slow down an
// address that keeps sending wrong passwords.
type addresses struct {
	mu sync.Mutex
	m  map[string]*failures
	// turns holds the address groups with a check in progress: one at a
	// time per group, and the number waiting for it.
	turns map[string]*turn
}

type turn struct {
	ch      chan struct{} // holds a value while a check runs
	waiting int
}

// addressWaiting bounds the checks of one address that wait for its check
// in progress.
const addressWaiting = 4

type failures struct {
	count int
	// until is when the address may be checked again (zero: now).
	until time.Time
	// last is the last failure, after which the record is forgotten.
	last time.Time
}

// forgetAfter is how long an address's failures are remembered after its
// last one; maxAddresses bounds the records (expired ones go first, and
// if none has expired the table starts over).
const (
	forgetAfter  = 15 * time.Minute
	maxAddresses = 1 << 16
)

func newAddresses() *addresses {
	return &addresses{m: make(map[string]*failures), turns: make(map[string]*turn)}
}

// enter waits until group has no check in progress and makes this one
// its check; release ends it. Too many waiting from one group are told to
// slow down.
func (a *addresses) enter(ctx context.Context, group string) (release func(), _ error) {
	a.mu.Lock()
	t := a.turns[group]
	if t == nil {
		t = &turn{ch: make(chan struct{}, 1)}
		a.turns[group] = t
	}
	if t.waiting >= addressWaiting+1 {
		a.mu.Unlock()
		return nil, &SlowDownError{RetryAfter: time.Second}
	}
	t.waiting++
	a.mu.Unlock()
	leave := func() {
		a.mu.Lock()
		if t.waiting--; t.waiting == 0 {
			delete(a.turns, group)
		}
		a.mu.Unlock()
	}
	select {
	case t.ch <- struct{}{}:
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
	return func() { <-t.ch; leave() }, nil
}

// failing reports whether group has failures on record.
func (a *addresses) failing(group string, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.m[group]
	return f != nil && now.Sub(f.last) <= forgetAfter
}

// addressGroup is the unit addresses are counted by: the address itself,
// or its /64 for IPv6, which one client holds whole.
func addressGroup(addr string) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// wait is how long group must still wait before its next check.
func (a *addresses) wait(group string, now time.Time) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.m[group]
	if f == nil {
		return 0
	}
	if now.Sub(f.last) > forgetAfter {
		delete(a.m, group)
		return 0
	}
	if now.Before(f.until) {
		return f.until.Sub(now)
	}
	return 0
}

// failed records a wrong password from group.
func (a *addresses) failed(group string, now time.Time, o Options) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.m[group]
	if f == nil || now.Sub(f.last) > forgetAfter {
		if len(a.m) >= maxAddresses {
			a.sweep(now)
		}
		f = new(failures)
		a.m[group] = f
	}
	f.count++
	f.last = now
	if over := f.count - o.FreeFailures; over > 0 {
		delay := o.FirstDelay
		for i := 1; i < over && delay < o.MaxDelay; i++ {
			delay *= 2
		}
		f.until = now.Add(min(delay, o.MaxDelay))
	}
}

// succeeded forgets group's failures: a right password ends the slowdown.
func (a *addresses) succeeded(group string) {
	a.mu.Lock()
	delete(a.m, group)
	a.mu.Unlock()
}

// sweep drops expired records, or all when none has expired.
func (a *addresses) sweep(now time.Time) {
	for g, f := range a.m {
		if now.Sub(f.last) > forgetAfter {
			delete(a.m, g)
		}
	}
	if len(a.m) >= maxAddresses {
		a.m = make(map[string]*failures)
	}
}
