// Package testproc runs a server binary as a child process of a test: the
// binary found or the test skipped (failed where CI requires it), started
// again when a port picked beforehand was taken meanwhile, waited for until
// it answers, stopped at cleanup, and killed by the kernel if the test
// process dies without its cleanup.
package testproc
