package accounts

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// testHash is a stand-in password hash: "hash:<password>". The Checker's
// behaviour does not depend on the algorithm, only on what Compare says
// and how often it is called (the real comparers are tested with the
// handler).
type counter struct {
	calls atomic.Int64
	// gate, if set, holds every comparison until it is closed.
	gate chan struct{}
	// started gets a value when a comparison starts.
	started chan struct{}
}

func (c *counter) compare(hash, password []byte) (bool, error) {
	c.calls.Add(1)
	if c.started != nil {
		c.started <- struct{}{}
	}
	if c.gate != nil {
		<-c.gate
	}
	return string(hash) == "hash:"+string(password), nil
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func newTestChecker(cmp *counter, clk *clock, opts Options) *Checker {
	opts.Now = clk.Now
	users := []User{{Name: "alice", Hash: []byte("hash:alice-pass"), Compare: cmp.compare}}
	return New(users, User{Hash: []byte("hash:decoy"), Compare: cmp.compare}, opts)
}

func TestCheckRightAndWrong(t *testing.T) {
	cmp, clk := &counter{}, &clock{now: time.Unix(1e9, 0)}
	c := newTestChecker(cmp, clk, Options{})
	ctx := context.Background()

	tag, err := c.Check(ctx, "192.0.2.1", "alice", "alice-pass")
	if err != nil || !c.Valid("alice", tag) {
		t.Fatalf("right password: tag %q, err %v", tag, err)
	}
	_, wrongPass := c.Check(ctx, "192.0.2.1", "alice", "nope")
	_, unknownUser := c.Check(ctx, "192.0.2.1", "mallory", "alice-pass")
	if !errors.Is(wrongPass, ErrRefused) || !errors.Is(unknownUser, ErrRefused) {
		t.Fatalf("wrong password: %v; unknown user: %v; want ErrRefused for both", wrongPass, unknownUser)
	}
	if wrongPass.Error() != unknownUser.Error() {
		t.Errorf("a wrong password (%q) and an unknown user (%q) read differently", wrongPass, unknownUser)
	}
	// The unknown user cost a comparison too (with the decoy): the same
	// work, so the same time.
	if got := cmp.calls.Load(); got != 3 {
		t.Errorf("comparisons = %d, want 3 (one each)", got)
	}
	if c.Valid("alice", "") || c.Valid("mallory", tag) {
		t.Error("Valid accepts an empty tag or an unknown name")
	}
}

func TestTagNamesTheHash(t *testing.T) {
	a := User{Name: "alice", Hash: []byte("h1")}
	b := User{Name: "alice", Hash: []byte("h2")}
	if a.Tag() == b.Tag() {
		t.Error("a changed hash keeps the tag: old tokens would stay valid")
	}
}

func TestVerifiedPasswordsAreRememberedBriefly(t *testing.T) {
	cmp, clk := &counter{}, &clock{now: time.Unix(1e9, 0)}
	c := newTestChecker(cmp, clk, Options{VerifiedFor: time.Minute})
	for range 10 {
		if _, err := c.Check(context.Background(), "192.0.2.1", "alice", "alice-pass"); err != nil {
			t.Fatal(err)
		}
	}
	if got := cmp.calls.Load(); got != 1 {
		t.Fatalf("10 logins cost %d comparisons, want 1", got)
	}
	// A wrong password is never taken from the memory.
	if _, err := c.Check(context.Background(), "192.0.2.1", "alice", "alice-pass2"); !errors.Is(err, ErrRefused) {
		t.Fatalf("wrong password: %v", err)
	}
	clk.Add(time.Minute + time.Second)
	if _, err := c.Check(context.Background(), "192.0.2.1", "alice", "alice-pass"); err != nil {
		t.Fatal(err)
	}
	if got := cmp.calls.Load(); got != 3 {
		t.Fatalf("comparisons = %d, want 3: the memory expires", got)
	}
}

func TestRepeatedFailuresAreSlowedDown(t *testing.T) {
	cmp, clk := &counter{}, &clock{now: time.Unix(1e9, 0)}
	c := newTestChecker(cmp, clk, Options{FreeFailures: 3, FirstDelay: time.Second, MaxDelay: 8 * time.Second})
	ctx := context.Background()
	for i := range 3 {
		if _, err := c.Check(ctx, "192.0.2.1", "alice", "guess"); !errors.Is(err, ErrRefused) {
			t.Fatalf("free failure %d: %v", i, err)
		}
	}
	// The fourth failure starts the slowdown.
	if _, err := c.Check(ctx, "192.0.2.1", "alice", "guess"); !errors.Is(err, ErrRefused) {
		t.Fatal(err)
	}
	before := cmp.calls.Load()
	var slow *SlowDownError
	for range 100 {
		if _, err := c.Check(ctx, "192.0.2.1", "alice", "guess"); !errors.As(err, &slow) {
			t.Fatalf("while slowed down: %v, want a SlowDownError", err)
		}
	}
	if got := cmp.calls.Load(); got != before {
		t.Fatalf("checks while slowed down ran %d comparisons, want none", got-before)
	}
	if slow.RetryAfter <= 0 || slow.RetryAfter > time.Second {
		t.Errorf("RetryAfter = %v, want within the first delay", slow.RetryAfter)
	}
	// Another address is not slowed down; an IPv6 /64 counts as one.
	if _, err := c.Check(ctx, "192.0.2.2", "alice", "alice-pass"); err != nil {
		t.Fatalf("another address: %v", err)
	}
	// After the delay, one more check; its failure doubles the delay.
	clk.Add(time.Second)
	if _, err := c.Check(ctx, "192.0.2.1", "alice", "guess"); !errors.Is(err, ErrRefused) {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	if _, err := c.Check(ctx, "192.0.2.1", "alice", "guess"); !errors.As(err, &slow) {
		t.Fatalf("one second into a two-second delay: %v", err)
	}
	// A password verified before still logs in from the slowed address
	// (no comparison needed), and a right one ends the slowdown.
	if _, err := c.Check(ctx, "192.0.2.1", "alice", "alice-pass"); err != nil {
		t.Fatalf("a remembered password from a slowed address: %v", err)
	}
}

func TestIPv6SlowdownCountsTheSlash64(t *testing.T) {
	cmp, clk := &counter{}, &clock{now: time.Unix(1e9, 0)}
	c := newTestChecker(cmp, clk, Options{FreeFailures: 1})
	ctx := context.Background()
	_, _ = c.Check(ctx, "2001:db8:1:2::1", "alice", "guess")
	_, _ = c.Check(ctx, "2001:db8:1:2::2", "alice", "guess")
	var slow *SlowDownError
	if _, err := c.Check(ctx, "2001:db8:1:2:ffff::3", "alice", "guess"); !errors.As(err, &slow) {
		t.Fatalf("same /64: %v, want a SlowDownError", err)
	}
	if _, err := c.Check(ctx, "2001:db8:1:3::1", "alice", "guess"); !errors.Is(err, ErrRefused) {
		t.Fatalf("another /64: %v, want an ordinary refusal", err)
	}
}

func TestConcurrentChecksAreBounded(t *testing.T) {
	cmp := &counter{gate: make(chan struct{}), started: make(chan struct{}, 100)}
	clk := &clock{now: time.Unix(1e9, 0)}
	c := newTestChecker(cmp, clk, Options{Concurrent: 2, Waiting: 3})
	ctx := context.Background()
	results := make(chan error, 10)
	// Five checks from five addresses: two run, three wait.
	for i := range 5 {
		go func() {
			_, err := c.Check(ctx, "192.0.2."+string(rune('1'+i)), "alice", "alice-pass")
			results <- err
		}()
	}
	<-cmp.started
	<-cmp.started
	// Once the five hold every slot and waiting place, a sixth is
	// refused at once.
	for len(c.waiting) < 5 {
		runtime.Gosched()
	}
	if _, err := c.Check(ctx, "198.51.100.1", "alice", "other"); !errors.Is(err, ErrBusy) {
		t.Fatalf("sixth check: %v, want ErrBusy", err)
	}
	if n := len(cmp.started); n != 0 {
		t.Fatalf("%d more comparisons started while two were running", n)
	}
	close(cmp.gate)
	for range 5 {
		if err := <-results; err != nil {
			t.Errorf("a waiting check: %v", err)
		}
	}
	// The first two verified the password: the waiting three found it
	// verified when their turn came, and compared nothing.
	if got := cmp.calls.Load(); got != 2 {
		t.Errorf("comparisons = %d, want 2", got)
	}
}

// A slowed-down address is refused before it takes a place in the queue:
// its flood cannot crowd out other clients' logins.
func TestSlowedAddressTakesNoPlaceInTheQueue(t *testing.T) {
	cmp := &counter{}
	clk := &clock{now: time.Unix(1e9, 0)}
	c := newTestChecker(cmp, clk, Options{Concurrent: 1, Waiting: 1, FreeFailures: 1})
	ctx := context.Background()
	for range 2 {
		_, _ = c.Check(ctx, "203.0.113.9", "alice", "guess")
	}
	// Another client's checks now hold the slot and the waiting place.
	cmp.gate, cmp.started = make(chan struct{}), make(chan struct{}, 10)
	results := make(chan error, 2)
	for i := range 2 {
		go func() {
			_, err := c.Check(ctx, "192.0.2."+string(rune('1'+i)), "alice", "alice-pass")
			results <- err
		}()
	}
	<-cmp.started
	for len(c.waiting) < 2 {
		runtime.Gosched()
	}
	var slow *SlowDownError
	if _, err := c.Check(ctx, "203.0.113.9", "alice", "guess"); !errors.As(err, &slow) {
		t.Errorf("the slowed address, with the queue full: %v, want a SlowDownError", err)
	}
	close(cmp.gate)
	for range 2 {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
}

// gatedCounter holds the comparisons of one password until released;
// heldStarted gets a value as each of them starts.
type gatedCounter struct {
	counter
	held        string
	heldStarted chan struct{}
	release     chan struct{}
}

func (g *gatedCounter) compare(hash, password []byte) (bool, error) {
	if string(password) == g.held {
		g.heldStarted <- struct{}{}
		<-g.release
	}
	return g.counter.compare(hash, password)
}

func newGatedChecker(g *gatedCounter, opts Options) *Checker {
	clk := &clock{now: time.Unix(1e9, 0)}
	opts.Now = clk.Now
	users := []User{{Name: "alice", Hash: []byte("hash:alice-pass"), Compare: g.compare}}
	return New(users, User{Hash: []byte("hash:decoy"), Compare: g.compare}, opts)
}

// receive waits for a value, failing after a generous minute (a way to
// detect a check that never comes, never a timing assertion).
func receive[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("waited a minute for %s", what)
		panic("unreachable")
	}
}

// One address's checks run one at a time, and only a few wait: a flood
// from one address holds at most one place in the queue.
func TestOneCheckAtATimePerAddress(t *testing.T) {
	g := &gatedCounter{held: "guess", heldStarted: make(chan struct{}, 100), release: make(chan struct{})}
	c := newGatedChecker(g, Options{Concurrent: 4, Waiting: 100, FreeFailures: 100})
	ctx := context.Background()
	results := make(chan error, 100)
	for range 1 + addressWaiting {
		go func() {
			_, err := c.Check(ctx, "203.0.113.9", "alice", "guess")
			results <- err
		}()
	}
	receive(t, "first comparison", g.heldStarted)
	// The others wait for the address's turn, outside the queue.
	for {
		c.addrs.mu.Lock()
		n := c.addrs.turns["203.0.113.9"].waiting
		c.addrs.mu.Unlock()
		if n == 1+addressWaiting {
			break
		}
		runtime.Gosched()
	}
	if n := len(c.waiting); n != 1 {
		t.Errorf("one address holds %d places in the queue, want 1", n)
	}
	var slow *SlowDownError
	if _, err := c.Check(ctx, "203.0.113.9", "alice", "guess"); !errors.As(err, &slow) {
		t.Errorf("one more check from the address: %v, want a SlowDownError", err)
	}
	if n := len(g.heldStarted); n != 0 {
		t.Errorf("%d more comparisons of the address started while one ran", n)
	}
	close(g.release)
	for range 1 + addressWaiting {
		if err := receive(t, "result", results); !errors.Is(err, ErrRefused) {
			t.Errorf("check: %v", err)
		}
	}
}

// An address with failures on record has its own lane: while it holds
// that lane, an address without failures still gets its turn at once,
// even with one turn for such addresses in all.
func TestFailingAddressHasItsOwnLane(t *testing.T) {
	g := &gatedCounter{held: "guess", heldStarted: make(chan struct{}, 100), release: make(chan struct{})}
	c := newGatedChecker(g, Options{Concurrent: 1, Waiting: 10, FreeFailures: 100})
	ctx := context.Background()
	go func() { _, _ = c.Check(ctx, "203.0.113.9", "alice", "nope") }() // a first failure, not held
	for !c.addrs.failing("203.0.113.9", c.opts.Now()) {
		runtime.Gosched()
	}
	guessing := make(chan error, 1)
	go func() {
		_, err := c.Check(ctx, "203.0.113.9", "alice", "guess")
		guessing <- err
	}()
	receive(t, "the failing address's comparison", g.heldStarted)
	fresh := make(chan error, 1)
	go func() {
		_, err := c.Check(ctx, "192.0.2.1", "alice", "alice-pass")
		fresh <- err
	}()
	if err := receive(t, "the clean address's login while the failing one held its lane", fresh); err != nil {
		t.Fatal(err)
	}
	close(g.release)
	if err := receive(t, "the failing address's result", guessing); !errors.Is(err, ErrRefused) {
		t.Fatal(err)
	}
}

// A failing address's check starts only while no address without
// failures waits or checks.
func TestFailingAddressYieldsToOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := &gatedCounter{held: "alice-pass", heldStarted: make(chan struct{}, 10), release: make(chan struct{})}
		c := newGatedChecker(g, Options{Concurrent: 1, Waiting: 10, FreeFailures: 100})
		ctx := context.Background()
		if _, err := c.Check(ctx, "203.0.113.9", "alice", "nope"); !errors.Is(err, ErrRefused) {
			t.Fatal(err)
		}
		clean := make(chan error, 1)
		go func() {
			_, err := c.Check(ctx, "192.0.2.1", "alice", "alice-pass")
			clean <- err
		}()
		<-g.heldStarted
		guessing := make(chan error, 1)
		go func() {
			_, err := c.Check(ctx, "203.0.113.9", "alice", "guess")
			guessing <- err
		}()
		synctest.Wait()
		if n := g.calls.Load(); n != 1 {
			t.Fatalf("%d comparisons, want 1 (the first failure): the guessing address compared while another's check ran", n)
		}
		close(g.release)
		if err := <-clean; err != nil {
			t.Fatal(err)
		}
		if err := <-guessing; !errors.Is(err, ErrRefused) {
			t.Fatal(err)
		}
	})
}
