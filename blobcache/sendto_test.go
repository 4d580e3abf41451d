package blobcache

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// tcpPair returns the two ends of a loopback TCP connection: a
// *net.TCPConn, whose ReadFrom sends files with sendfile, as a server's
// connection does.
func tcpPair(t *testing.T) (server *net.TCPConn, client net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { s.Close(); client.Close() })
	return s.(*net.TCPConn), client
}

// TestSendToStreamsAFillInProgress: SendTo sends the fill's file as it
// grows, from its own descriptor, to a connection: every byte, in order,
// while the upstream is still sending; the last byte only with the verdict.
func TestSendToStreamsAFillInProgress(t *testing.T) {
	for _, corrupt := range []bool{false, true} {
		s := openStore(t, Options{})
		data, d := blob(1<<20+123, 40)
		send := data
		if corrupt {
			send = bytes.Clone(data)
			send[len(send)-1] ^= 1
		}
		f, _ := s.Join(d)
		body := newPipeBody()
		if err := f.Start(Source{Body: body, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		// Two readers, one joining after half of the blob arrived.
		type result struct {
			got []byte
			err error
		}
		results := make(chan result, 2)
		sendOne := func() {
			r, err := f.Reader(t.Context())
			if err != nil {
				results <- result{err: err}
				return
			}
			server, client := tcpPair(t)
			done := make(chan result, 1)
			go func() {
				got, err := io.ReadAll(client)
				done <- result{got, err}
			}()
			_, err = r.SendTo(server)
			r.Close()
			server.Close()
			got := <-done
			results <- result{got.got, err}
		}
		go sendOne()
		half := len(send) / 2
		if err := body.feed(send[:half], 64<<10); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "half the blob in the file", func() bool { return f.writtenNow() >= int64(half-1) })
		go sendOne()
		go func() { body.feed(send[half:], 64<<10); body.pw.Close() }()
		for range 2 {
			res := <-results
			if corrupt {
				if res.err == nil || !errors.Is(res.err, ErrDigestMismatch) || len(res.got) >= len(data) {
					t.Fatalf("wrong bytes: SendTo sent %d of %d bytes, error %v; want fewer and a mismatch", len(res.got), len(data), res.err)
				}
				continue
			}
			if res.err != nil || !bytes.Equal(res.got, data) {
				t.Fatalf("SendTo: %d bytes, %v; want all %d", len(res.got), res.err, len(data))
			}
		}
	}
}
