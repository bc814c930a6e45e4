// Package history is the record the example binaries leave behind and the checker that judges it.
//
// The example publisher prints "accepted <source> <epoch> <stream> <seq>" once Publish returned;
// the example consumer keeps a ledger (how many times each message's effect was committed) and
// prints it with -dump as "<source> <epoch> <stream> <seq> <count>", and reports gaps on stderr as
// "gap <source> <epoch> <stream> <from> <to>" and duplicates whose body differs from the handled
// one as "conflict <source> <epoch> <stream> <seq>" (a reused sequence number, which the ledger
// alone would count as applied once). Fields never contain whitespace: names are escaped with
// Escape. Check compares the accepted lines with the ledger like Jepsen's total-queue
// checker, and Table prints the verdict.
//
// # Guarantees
//
// Every Format function's output is accepted by the matching Parse function and gives back the
// same value (fuzzed). Check counts every accepted message exactly once in Lost, ExactlyOnce or
// (with a count above one) AppliedTwice.
//
// # Concurrency
//
// Everything here is pure: safe for concurrent use on distinct values.
//
// # Caveats
//
// Check trusts the runs' Killed flags: a run marked killed explains ledger entries in its window
// without an accepted line. Mark only runs that really died abruptly.
package history
