// Package journal is rabbitkit's durable local outbox: a single bbolt file
// where every message accepted by the publisher lives until the broker has
// confirmed it.
//
// A Journal is opened with Open and a source name. Append (and AppendBatch
// for one caller with many entries) stores an Entry durably and assigns it a
// global ID and the next sequence number of its stream. The publisher reads
// pending entries in ID order with Read, deletes confirmed ones with Delete,
// records failed attempts with RecordAttempt and moves undeliverable entries
// aside with Park, from where an operator lists them (Parked), re-drives them
// (Redrive) or drops them (DropParked).
//
// # Guarantees
//
//   - An Append that returned nil is on disk (fsync'd) and survives a crash or
//     kill -9 of the process. An Append that returned an error did not
//     journal the entry.
//   - IDs grow by one per entry and sequence numbers by one per entry of a
//     stream, starting at 1. Both are persisted in the transaction that stores
//     the entry and are never reused, even after deletes and restarts.
//   - Each journal records its source (checked on every Open) and a random
//     epoch chosen at creation. A lost or emptied file is detected through
//     the marker file <path>.id and refused (ErrTruncated) unless
//     AllowNewEpoch starts a new epoch, logged at ERROR.
//   - A truncated or garbage file gives ErrCorrupt, not a crash: the meta
//     pages are validated before bbolt maps the file.
//   - An entry is either pending or parked, never both; nothing is dropped
//     silently.
//
// # Concurrency
//
// All methods are safe for concurrent use. One writer goroutine owns every
// bbolt write: it takes the first waiting request and everything queued
// behind it, applies them in one transaction and answers all after one
// commit (group commit), so throughput grows with the number of concurrent
// callers. Read, Parked and Stats run concurrently with writes.
//
// # Caveats
//
//   - One process (one Journal) per file: a second Open waits LockTimeout and
//     fails with ErrLocked.
//   - Restoring an old copy of the file (with its marker) would reuse
//     sequence numbers under the same epoch; never do that.
//   - Unix only (flock).
package journal
