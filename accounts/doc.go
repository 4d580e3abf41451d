// Package accounts checks the passwords of the proxy's own accounts (the
// "users" of a private site) against their configured hashes, without
// letting a flood of wrong passwords take the CPU from pulls.
//
// Password hashes are slow by design (bcrypt at cost 14 takes about a
// second of one core), so a Checker spends them carefully:
//   - a password it verified lately is recognised from memory for a few
//     minutes (a keyed digest, never the password), so a client that logs
//     in for every pull costs one hash check;
//   - at most a few hash checks run at once, and only a bounded number
//     wait for their turn; beyond that, a check is refused as busy;
//   - a client address (an IPv6 /64 counts as one) has one check at a
//     time, and its others wait apart, so one address cannot fill the
//     queue;
//   - an address with failures on record has a lane of its own, one
//     check at a time, which starts only while no other address's check
//     waits or runs;
//   - each address may fail a few times; after that it must wait before
//     its next check, a wait that doubles with each failure, and its
//     checks in the meantime are refused without any hashing.
//
// The package knows nothing of Caddy: the hash comparison is a function
// the caller supplies (Caddy's caddyauth comparers, in the handler).
package accounts
