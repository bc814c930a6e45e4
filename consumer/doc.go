// Package consumer turns RabbitMQ's at-least-once delivery into exactly-once effects.
//
// A publisher built on rabbitkit stamps every message with (source, epoch, stream, seq) — see
// package protocol — and resends what it could not confirm, so a queue can hold duplicates, and a
// consumer that dies before acking gets its messages again. A Consumer applies each stamp once,
// drops the duplicates, and reports the sequence numbers that never arrived (gaps) instead of
// letting them go unnoticed.
//
//	c, err := consumer.New(consumer.Config{
//		URLs:      []string{"amqp://guest:guest@localhost:5672/"},
//		Queue:     "orders",
//		Topology:  topology.Topology{Queues: []topology.Queue{{Name: "orders", Type: topology.Quorum}}},
//		StorePath: "/var/lib/orders/consumer.db",
//	})
//	...
//	err = c.RunTx(ctx, func(ctx context.Context, tx *bbolt.Tx, m *consumer.Message) error {
//		return applyOrder(tx, m.Body) // commits together with the dedup mark
//	})
//	...
//	err = c.View(ctx, func(tx *bbolt.Tx) error { return readOrders(tx) }) // what RunTx wrote
//
// The dedup state and the handlers' transactions belong to a Store[T], where T is the backend's
// transaction type: New opens the default BoltStore (T is *bbolt.Tx); NewWithStore takes any other
// Store, and RunTx's handler then gets that store's own transaction type. Package
// consumer/storetest is the contract every Store passes.
//
// For every delivery the Consumer decodes the stamp and asks its dedup window (package
// consumer/dedup) whether the stamp is new, a duplicate, suspicious (a sequence number absurdly far
// ahead) or from a retired epoch. New messages run the handler; the outcome is committed to the
// Store (a bbolt file by default), and only then is the delivery acked. Duplicates are acked
// without running the handler. Whatever cannot be handled is parked: published, with a confirm,
// to a parking queue (Config.ParkingQueue, "<queue>.parked" by default) with its original body,
// properties and headers plus the rk-park- headers (protocol.HeaderParkReason and the others;
// docs/PROTOCOL.md, "Parked messages", defines them), and only then acked. Two properties move
// into headers instead: expiration, so that a parked message waits for an operator rather than
// expiring unseen, and user-id, which RabbitMQ refuses from any connection but the original
// publisher's user. The copy is kept within one frame: an over-long reason is cut, and original
// headers that would not fit are left out except the rk- stamp.
//
// # Guarantees
//
//   - Exactly-once effects with RunTx: the handler's writes to the store's transaction (the bbolt
//     transaction of a BoltStore), the dedup mark and the dedup state commit atomically and
//     durably (for BoltStore, fsync) before the ack. A crash at
//     any point — before the commit, between commit and ack — either rolls all of it back (the
//     message is redelivered and handled) or keeps all of it (the redelivery is dropped as a
//     duplicate).
//   - With Run (a plain Handler), the mark is committed after the handler returned nil and before
//     the ack: duplicates in the queue and redeliveries after a lost connection are dropped. Only a
//     crash of the process between the handler's return and the group commit (milliseconds) runs
//     the handler again for that message: make its effects idempotent, or use RunTx.
//   - Per-stream order: messages of one (source, stream) are handled one at a time in delivery
//     order, also with Config.Workers > 1 (streams are hashed to workers). A handler that fails
//     is retried before anything later of its stream runs.
//   - Gaps: a missing sequence number is reported (Config.OnGap, MetricGaps, an ERROR log with
//     source, stream, epoch and range) once the later numbers have waited Config.Dedup.GapGrace.
//     A reported number that arrives later is handled once and reported late (OnLate). A parked
//     message accounts for its number: it is not a gap.
//   - Nothing is dropped: a message is acked only after its outcome — handled, duplicate of a
//     committed stamp, or parked with a broker confirm — is durable. Bad input (no rk- headers
//     under NoStampPark, ill-typed, missing or negative headers, a suspicious jump such as 2^62,
//     a retired epoch) is parked with the reason and never moves the dedup state. A duplicate with
//     a different body is dropped and reported (OnConflict).
//   - Acks go only to the channel the delivery came from, as one basic.ack(multiple) for the
//     contiguous prefix of finished deliveries. After a reconnect, finished deliveries of the old
//     channel are not acked (their tags would name other messages); they are redelivered and
//     dropped as duplicates, since their marks are committed.
//   - Recovery: connections are retried forever with backoff; the topology (plus the parking
//     queue) is declared on every connect; a consumer cancelled by the broker (queue deleted),
//     a channel error, and the broker's consumer timeout (channel closed with 406) each start a
//     new session. A store that is unavailable (a shared store's database, a full disk:
//     ErrStoreUnavailable, ErrDiskFull) is retried with backoff, nothing of the batch acked.
//   - Re-drive: a message parked after its handler failed is accounted for, and remembered as
//     parked; the copy `rabbitkit parked redrive` publishes back (protocol.HeaderRedrive) is
//     applied once (Message.Redriven), any further copy is a duplicate.
//   - Crash loops: a message whose handler kills the process (os.Exit, a panic in another
//     goroutine, the OOM killer) is parked after Config.MaxCrashes starts on redeliveries,
//     counted durably before each.
//   - Untrusted writers: Config.MaxStreams bounds the streams held; Config.Admit refuses messages
//     before dedup (bind stamp sources to the broker's validated user-id).
//
// # Concurrency
//
// Run (or RunTx) starts, and waits for before returning:
//
//   - the Run goroutine itself, which owns the consuming connection and channel: it dials,
//     declares, consumes, dispatches deliveries to workers and sends acks;
//   - Config.Workers worker goroutines, each owning the dedup window of the streams hashed to it:
//     it classifies, runs plain handlers (or queues transactional ones), and commits a batch of
//     up to Config.MaxBatch deliveries to the store;
//   - one committer goroutine per worker, started and stopped by its worker: it waits in
//     Store.Commit for a plain handler's batch while the worker handles the next one;
//   - the parker goroutine, which owns a second connection used only to publish to the parking
//     queue with confirms;
//   - the callback goroutine, which runs OnGap, OnLate, OnEpoch, OnParked and OnConflict one at a
//     time, in order. Callbacks must not block: they delay only each other, never handling or
//     acking, but their queue grows meanwhile.
//
// The BoltStore has one writer goroutine: it gathers the batches waiting (from all workers) into
// one bbolt transaction and one fsync; transactional handlers run inside it, on that goroutine. A
// handler that fails is rolled back alone (the transaction is retried without it and without the
// later messages of its stream), like bbolt's DB.Batch but without its fixed delay.
//
// Nothing in the library waits for a caller to drain a channel. Only one Run of a Consumer may be
// active at a time (ErrRunning); a Consumer may be Run again after Run returned.
//
// # Caveats
//
//   - One active Run per queue: the dedup window of a Run lives in its memory (loaded from the
//     store at start), so two Runs — even sharing one Store — would each handle the other's
//     redeliveries again. An exclusive store (ScopeExclusive, such as BoltStore) refuses a second
//     concurrent Run through Store.Claim (ErrStoreInUse); a BoltStore also locks its file against
//     other processes. Competing consumers need a store shared by all of them (ScopeShared, such
//     as consumer/pginbox). Otherwise scale with Config.Workers (per-stream order is kept), or
//     split streams across queues, each with its own consumer.
//   - Messages without rk- headers under NoStampPassThrough get at-least-once handling only.
//   - Parking is at-least-once: a crash or connection loss after the parking publish was confirmed
//     and before the ack can park the same message twice. Parked messages of a handler that kept
//     failing are committed as accounted for, so their redeliveries are dropped, not parked again
//     (a re-drive of either copy applies the message once).
//   - A connection lost in the middle of a redelivered message's handler counts as one of its
//     Config.MaxCrashes starts too.
//   - While the parking queue cannot be reached, the worker parking a message keeps retrying (a
//     message is never dropped): the streams of that worker wait, and nothing of them is acked.
//   - The bbolt file does not shrink when idle streams are compacted or forgotten; its free pages
//     are reused.
//   - The body comparison behind OnConflict keeps only the last few bodies' hashes per stream in
//     memory (dedup.Config.HashHistory): older duplicates with a different body are dropped
//     without a report.
//   - The dedup window is bounded (dedup.Config): a stream with more than MaxSeen numbers waiting
//     above a missing one gives the missing range up (reported); retired epochs and forgotten
//     lost ranges are reported as they happen. See package dedup.
//   - Transactional handlers run on the store's single writer goroutine: keep them short, or they
//     delay every commit. A plain handler may take as long as it needs; it holds up only the
//     streams of its worker.
//   - Handler-to-ack latency is the group commit (an fsync) plus ack batching: a few milliseconds.
//     The broker's consumer timeout (30 min by default) must exceed the longest handler plus its
//     retries.
package consumer
