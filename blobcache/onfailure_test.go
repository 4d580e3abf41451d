package blobcache

import (
	"errors"
	"io"
	"testing"
	"time"
)

// TestOnFailureOncePerFill: Source.OnFailure hears of each upstream body
// that failed a fill exactly once, however many readers it had, with an
// error that tells why; and never of fills that succeeded or ended for
// reasons of the store's own (abandoned).
func TestOnFailureOncePerFill(t *testing.T) {
	data, d := blob(256<<10, 41)
	for _, tc := range []struct {
		name string
		want error // nil: no call
		feed func(p *pipeBody)
		opts Options
	}{
		{"wrong bytes", ErrDigestMismatch, func(p *pipeBody) {
			bad := append([]byte(nil), data...)
			bad[len(bad)-1] ^= 1
			p.feed(bad, 32<<10)
			p.pw.Close()
		}, Options{}},
		{"cut (unexpected EOF)", ErrShortBody, func(p *pipeBody) {
			p.feed(data[:100<<10], 32<<10)
			p.pw.CloseWithError(io.ErrUnexpectedEOF)
		}, Options{}},
		{"clean end before the announced size", ErrShortBody, func(p *pipeBody) {
			p.feed(data[:100<<10], 32<<10)
			p.pw.Close()
		}, Options{}},
		{"more than announced", ErrDigestMismatch, func(p *pipeBody) {
			p.feed(append(append([]byte(nil), data...), 'x'), 32<<10)
			p.pw.Close()
		}, Options{}},
		{"stall", ErrStalled, func(p *pipeBody) {
			p.feed(data[:1000], 1000) // and then nothing
		}, Options{StallTimeout: 100 * time.Millisecond}},
		{"connection reset", errReset, func(p *pipeBody) {
			p.feed(data[:1000], 1000)
			p.pw.CloseWithError(errReset)
		}, Options{}},
		{"success", nil, func(p *pipeBody) {
			p.feed(data, 32<<10)
			p.pw.Close()
		}, Options{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, tc.opts)
			f, _ := s.Join(d)
			calls := make(chan error, 4)
			body := newPipeBody()
			src := Source{Body: body, Size: int64(len(data)), OnFailure: func(err error) { calls <- err }}
			r1, err := f.StartReading(t.Context(), src)
			if err != nil {
				t.Fatal(err)
			}
			r2, err := f.Reader(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			go tc.feed(body)
			for _, r := range []*Reader{r1, r2} {
				_, err := readAllFrom(r)
				if (err == nil) != (tc.want == nil) {
					t.Fatalf("reader: %v", err)
				}
				r.Close()
			}
			waitTmpEmpty(t, s)
			s.Close() // the fill's goroutine has ended: every call is in
			close(calls)
			var got []error
			for err := range calls {
				got = append(got, err)
			}
			switch {
			case tc.want == nil && len(got) != 0:
				t.Fatalf("OnFailure called for a good fill: %v", got)
			case tc.want != nil && len(got) != 1:
				t.Fatalf("OnFailure called %d times, want once: %v", len(got), got)
			case tc.want != nil && !errors.Is(got[0], tc.want):
				t.Fatalf("OnFailure(%v), want an error wrapping %v", got[0], tc.want)
			}
		})
	}
}

var errReset = errors.New("connection reset by peer")

// TestOnFailureNotForAbandonedFill: a fill nobody reads any more is
// stopped by the store; that says nothing about the upstream.
func TestOnFailureNotForAbandonedFill(t *testing.T) {
	s := openStore(t, Options{Linger: time.Millisecond})
	data, d := blob(64<<10, 42)
	f, _ := s.Join(d)
	calls := make(chan error, 1)
	body := newPipeBody()
	if err := f.Start(Source{Body: body, Size: int64(len(data)), OnFailure: func(err error) { calls <- err }}); err != nil {
		t.Fatal(err)
	}
	go body.feed(data[:1000], 1000) // then nothing; nobody reads
	waitFor(t, "the fill abandoned", f.doneNow)
	waitTmpEmpty(t, s)
	s.Close()
	close(calls)
	if err, ok := <-calls; ok {
		t.Fatalf("OnFailure called for an abandoned fill: %v", err)
	}
}
