// Command freeports prints N TCP ports on 127.0.0.1 that the kernel reports
// free right now, one per line. All N listeners are open at the same time,
// so the ports are distinct.
package main

import (
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
)

func main() {
	n := 1
	if len(os.Args) > 1 {
		var err error
		if n, err = strconv.Atoi(os.Args[1]); err != nil || n < 1 {
			log.Fatalf("usage: freeports [N]")
		}
	}
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		lns = append(lns, ln)
	}
	for _, ln := range lns {
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
		ln.Close()
	}
}
