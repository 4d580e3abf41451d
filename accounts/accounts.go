package accounts

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"runtime"
	"sync"
	"time"
)

// User is one account: its name, its password hash and the function that
// compares a password with the hash.
type User struct {
	Name string
	Hash []byte
	// Compare reports whether password matches hash; an error is a
	// malformed hash.
	Compare func(hash, password []byte) (bool, error)
}

// Tag names a version of an account: its name and hash. Tokens carry it,
// so that a token stops working once its account is removed or its
// password changed.
func (u User) Tag() string {
	sum := sha256.Sum256([]byte("account\x00" + u.Name + "\x00" + string(u.Hash)))
	return hex.EncodeToString(sum[:12])
}

// Options bound a Checker's work. Zero values take the defaults.
type Options struct {
	// VerifiedFor is how long a verified password is recognised without
	// a hash check. Default 5 minutes.
	VerifiedFor time.Duration
	// Concurrent is how many hash checks of addresses without failures
	// run at once (addresses with failures on record get one more, in a
	// lane of their own). Default: half the usable CPUs, at least one.
	Concurrent int
	// Waiting is how many checks may wait for a turn or run; more are
	// refused as busy. Default 8 per concurrent check. Checks from one
	// address run one at a time, and its others wait apart (at most
	// addressWaiting of them; more are told to slow down).
	Waiting int
	// FreeFailures is how many wrong passwords an address may send before
	// it is slowed down. Default 3.
	FreeFailures int
	// FirstDelay is the wait after the first failure beyond the free
	// ones; it doubles with each further failure, up to MaxDelay.
	// Defaults 1s and 5 minutes.
	FirstDelay, MaxDelay time.Duration
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// Checker verifies account passwords. It is safe for concurrent use.
type Checker struct {
	users map[string]User
	tags  map[string]string // by name: checked on every request of a private site
	// decoy is compared with for unknown names, so that an unknown name
	// and a wrong password take the same time and say the same thing.
	decoy User
	opts  Options

	key      [32]byte // keys the digests of verified passwords
	mu       sync.Mutex
	verified map[[32]byte]time.Time // digest of name and password -> until

	slots        chan struct{} // turns of addresses without failures
	suspectSlots chan struct{} // turns of addresses with failures on record
	waiting      chan struct{}

	addrs *addresses
	// clean counts the checks of addresses without failures that wait
	// or run.
	clean pending
}

// pending counts work in progress, and tells when there is none.
type pending struct {
	mu   sync.Mutex
	n    int
	none chan struct{} // closed while n == 0
}

func (p *pending) begin() {
	p.mu.Lock()
	if p.n == 0 {
		p.none = make(chan struct{})
	}
	p.n++
	p.mu.Unlock()
}

func (p *pending) end() {
	p.mu.Lock()
	if p.n--; p.n == 0 {
		close(p.none)
	}
	p.mu.Unlock()
}

// idle waits until nothing is in progress.
func (p *pending) idle(ctx context.Context) error {
	p.mu.Lock()
	if p.n == 0 {
		p.mu.Unlock()
		return nil
	}
	none := p.none
	p.mu.Unlock()
	select {
	case <-none:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Errors of Check. Wrong passwords and unknown names are both ErrRefused:
// a client learns nothing about which part was wrong.
var (
	ErrRefused = errors.New("wrong user name or password")
	ErrBusy    = errors.New("too many logins are being checked; try again shortly")
)

// SlowDownError refuses a check from an address that failed too often.
type SlowDownError struct{ RetryAfter time.Duration }

func (e *SlowDownError) Error() string {
	return "too many failed logins from this address; try again in " + e.RetryAfter.Round(time.Second).String()
}

// maxVerified bounds the memory of verified passwords (which starts over
// when full).
const maxVerified = 4096

// New returns a Checker for users; decoyHash is a hash of the kind the
// users have, compared with for names that are no account. Names must be
// unique (the configuration checks that).
func New(users []User, decoy User, opts Options) *Checker {
	if opts.VerifiedFor <= 0 {
		opts.VerifiedFor = 5 * time.Minute
	}
	if opts.Concurrent <= 0 {
		opts.Concurrent = max(1, runtime.GOMAXPROCS(0)/2)
	}
	if opts.Waiting <= 0 {
		opts.Waiting = 8 * opts.Concurrent
	}
	if opts.FreeFailures <= 0 {
		opts.FreeFailures = 3
	}
	if opts.FirstDelay <= 0 {
		opts.FirstDelay = time.Second
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = 5 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &Checker{
		users:    make(map[string]User, len(users)),
		decoy:    decoy,
		opts:     opts,
		verified: make(map[[32]byte]time.Time),
		slots:    make(chan struct{}, opts.Concurrent),
		// One at a time: an address that failed before is most likely
		// guessing, and gets no more than one core.
		suspectSlots: make(chan struct{}, 1),
		waiting:      make(chan struct{}, opts.Waiting+opts.Concurrent),
		addrs:        newAddresses(),
	}
	c.tags = make(map[string]string, len(users))
	for _, u := range users {
		c.users[u.Name] = u
		c.tags[u.Name] = u.Tag()
	}
	if _, err := rand.Read(c.key[:]); err != nil {
		panic("accounts: no randomness: " + err.Error())
	}
	return c
}

// Valid reports whether name is an account whose version is tag, as a
// token issued by Check's caller names it.
func (c *Checker) Valid(name, tag string) bool {
	want, ok := c.tags[name]
	return ok && tag != "" && want == tag
}

// Check verifies name and password for a client at addr (an IP address;
// empty when unknown). It returns the account's tag, or ErrRefused,
// ErrBusy, a *SlowDownError or the context's error.
func (c *Checker) Check(ctx context.Context, addr, name, password string) (string, error) {
	u, known := c.users[name]
	digest := c.digest(name, password)
	if known && c.recentlyVerified(digest, c.opts.Now()) {
		return u.Tag(), nil
	}
	group := addressGroup(addr)
	if wait := c.addrs.wait(group, c.opts.Now()); wait > 0 {
		return "", &SlowDownError{RetryAfter: wait}
	}

	// One check at a time per address: the others from that address wait
	// for it without a place in the queue, so that one address's flood
	// cannot fill the queue.
	release, err := c.addrs.enter(ctx, group)
	if err != nil {
		return "", err
	}
	defer release()
	// The check this one waited for may have verified the same password,
	// or failed and slowed the address down.
	if known && c.recentlyVerified(digest, c.opts.Now()) {
		return u.Tag(), nil
	}
	if wait := c.addrs.wait(group, c.opts.Now()); wait > 0 {
		return "", &SlowDownError{RetryAfter: wait}
	}

	// Wait for a turn, among a bounded number of waiters. An address with
	// failures on record takes its turns in a lane of its own, so that it
	// never delays the logins of addresses without any.
	select {
	case c.waiting <- struct{}{}:
	default:
		return "", ErrBusy
	}
	defer func() { <-c.waiting }()
	lane := c.slots
	suspect := c.addrs.failing(group, c.opts.Now())
	if suspect {
		lane = c.suspectSlots
	} else {
		c.clean.begin()
		defer c.clean.end()
	}
	select {
	case lane <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-lane }()
	if suspect {
		// It starts only while no address without failures waits or
		// checks: a check cannot be stopped once it runs, so the
		// guessing must not begin while others want the CPU.
		if err := c.clean.idle(ctx); err != nil {
			return "", err
		}
	}
	// Another address's check may have verified the same password
	// while this one waited.
	if known && c.recentlyVerified(digest, c.opts.Now()) {
		return u.Tag(), nil
	}

	subject := u
	if !known {
		subject = c.decoy
	}
	ok, err := subject.Compare(subject.Hash, []byte(password))
	now := c.opts.Now()
	if err != nil || !ok || !known {
		c.addrs.failed(group, now, c.opts)
		return "", ErrRefused
	}
	c.addrs.succeeded(group)
	c.remember(digest, now.Add(c.opts.VerifiedFor))
	return u.Tag(), nil
}

func (c *Checker) digest(name, password string) [32]byte {
	m := hmac.New(sha256.New, c.key[:])
	m.Write([]byte(name))
	m.Write([]byte{0})
	m.Write([]byte(password))
	var d [32]byte
	m.Sum(d[:0])
	return d
}

func (c *Checker) recentlyVerified(d [32]byte, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.verified[d]
	return ok && now.Before(until)
}

func (c *Checker) remember(d [32]byte, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.verified) >= maxVerified {
		c.verified = make(map[[32]byte]time.Time)
	}
	c.verified[d] = until
}
