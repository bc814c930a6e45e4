// Package journal is rabbitkit's durable local outbox: a single bbolt file
// where every message accepted by the publisher lives until the broker has
// confirmed it.
//
// A Journal is opened with Open and a source name. Append (and AppendBatch
// for one caller with many entries) stores an Entry durably and assigns it a
// global ID and the next sequence number of its stream. The publisher reads
// pending entries in ID order with Read (waiting on Changed when there are
// none), deletes confirmed ones with Delete, records failed attempts with
// RecordAttempt and moves undeliverable entries aside with Park, from where an
// operator lists them (Parked), re-drives them (Redrive) or drops them
// (DropParked). Stats reports the contents; Compact returns free space to the
// file system.
//
// # Guarantees
//
//   - An Append or AppendBatch that returned nil is on disk: the bbolt
//     transaction holding it was committed with fsync (fdatasync) before the
//     call returned.
//   - An Append that returned an error did not journal the entry (context
//     ended, journal full, disk full, too large, closed), with one exception:
//     ErrBroken, returned when the disk failed the commit itself, after which
//     the journal refuses all work until reopened. The context
//     is honoured until the writer starts committing the entry; from then on
//     the call waits for that one commit so that its answer is exact. A
//     caller may therefore retry without creating a duplicate.
//   - IDs grow by one per entry, and sequence numbers by one per entry of a
//     stream, starting at 1. Both are assigned and persisted in the
//     transaction that stores the entry and are never reused, even after
//     deletes, compaction and restarts.
//   - Each journal records its source (checked on every Open) and a random
//     epoch (>= 1) chosen when the file is created. A lost or emptied file is
//     detected through the marker file <path>.id and refused with
//     ErrTruncated, unless Options.AllowNewEpoch starts a new epoch (logged at
//     ERROR) — a recreated journal never reuses the old epoch.
//   - A truncated, garbage or foreign file gives an error (ErrCorrupt), not a
//     crash: the meta and freelist pages are validated before bbolt maps the
//     file, bbolt runs with debug.SetPanicOnFault, and every record carries a
//     crc32c checked on read.
//   - An entry is either pending or parked, never both; nothing is dropped
//     unless DropParked is called. The bounds (MaxEntries, MaxBytes) make
//     Append wait and TryAppend fail with ErrFull; they never evict.
//   - Read holds at most one page of entries in memory; the journal itself
//     keeps at most TailCacheBytes of recent entries.
//
// # Concurrency
//
// All methods are safe for concurrent use. One writer goroutine owns every
// bbolt write: Append, Delete, Park and the rest send it a request and wait
// for the answer. It takes the first waiting request and everything queued
// behind it, applies them in one transaction and answers all after one
// commit (group commit), so throughput grows with the number of concurrent
// callers instead of paying one fsync each. Read, Parked and Stats run
// concurrently with writes. Compact runs on the writer: writes wait for it.
// Close answers every request already submitted, then stops the writer.
//
// To wait for new entries without missing one, take Changed before Read:
//
//	ch := j.Changed()
//	es, err := j.Read(ctx, cursor, 100)
//	if err == nil && len(es) == 0 {
//		select {
//		case <-ch:
//		case <-ctx.Done():
//		}
//	}
//
// # Caveats
//
//   - One Journal per file: a second Open, from this process or another,
//     waits LockTimeout and fails with ErrLocked naming the file.
//   - Once the writer has taken a request, its caller waits for that commit
//     even if its context ends: normally one fsync, but as long as the disk
//     takes.
//   - The crash tests kill the process (SIGKILL), which proves the commit
//     protocol but not the disk's honesty about fsync on power loss; that is
//     bbolt's and the hardware's part.
//   - Restoring an old copy of the file together with its marker would reuse
//     sequence numbers under the same epoch and so make consumers drop new
//     messages as duplicates. Never restore a journal from a backup; delete
//     both files and let a new epoch start instead.
//   - Redrive puts an old (stream, seq) after newer entries under a new ID;
//     a consumer that already gave that sequence number up as lost treats it
//     as a duplicate.
//   - After a fault inside bbolt (a corrupt page met by a write) or an I/O
//     error during a commit the journal refuses further work with ErrBroken
//     until it is reopened; an Open that faulted leaks the file mapping of the
//     failed attempt.
//   - bbolt rewrites its free-page list on every commit, so a file left
//     mostly free (after a large backlog drained) slows commits down until it
//     is compacted; the writer does that on its own (see
//     Options.AutoCompactMinSize) when the live data is small enough.
//   - Unix only (flock).
package journal
