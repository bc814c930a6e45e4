// Package publisher is what a service calls instead of amqp.Channel.Publish: Publish journals the
// message durably on local disk and returns; one sender goroutine owns the AMQP connection and
// channel and delivers the journal to the broker, in order, with publisher confirms, through
// connection drops, broker restarts and process crashes.
//
//	p, err := publisher.New(publisher.Config{
//		URLs:        []string{"amqp://guest:guest@localhost:5672/"},
//		Source:      "billing-1",
//		JournalPath: "/var/lib/billing/outbox.db",
//		Topology:    topo,
//	})
//	r, err := p.Publish(ctx, publisher.Message{Exchange: "payments", RoutingKey: "captured", Body: b})
//	// err == nil: accepted. r.Wait(ctx) waits for the broker's confirm (or a parked outcome).
//
// Publish never waits for the broker. To fail fast on a configuration that cannot connect (a wrong
// password, a TLS failure, a refused vhost), call WaitReady at start-up: it returns nil once a
// session is up, else ctx's error with the last connection error, also in Stats().LastError and in
// OnStateChange's StateChange.Err.
//
// # Guarantees
//
//   - Accepted means durable: Publish returns nil only after the journal's transaction holding the
//     message is fsync'd. From then on the message reaches the broker at least once, unless it is
//     parked (below) — whatever happens to the connection, the broker or this process.
//   - Every message carries the wire stamp of docs/PROTOCOL.md: rk-source, rk-epoch, rk-stream,
//     rk-seq (from 1, +1 per message of the stream, never reused, also across restarts), and a
//     message-id "<source>/<epoch>/<stream>/<seq>" unless the caller set one. Consumers deduplicate
//     and order by it.
//   - Order: entries are sent in journal ID order, which is per-stream sequence order. After any
//     loss of the channel or connection, everything still in the journal is resent from the oldest
//     entry before anything newer; at start-up, what a previous process left goes first. The first
//     arrival of each message of a stream is therefore in sequence order, with one exception: when
//     the broker nacks a message (e.g. x-overflow reject-publish), later messages of the same
//     pipelined window may already have been accepted. After a nack the publisher sends one message
//     at a time until it is past the nacked window, so the reordering is limited to that window.
//   - Entries are removed from the journal only after a positive confirm. A confirm lost with the
//     channel or connection is "unknown", never a failure: the entry stays and is resent (so the
//     consumer sees duplicates, which the stamp lets it drop).
//   - Outcomes (Receipt.Wait, or Receipt.Err once Receipt.Done is closed; Err is nil while pending,
//     like context.Context's): nil = confirmed; *ParkedError = parked, with errors.Is(err,
//     ErrUnroutable) when the broker returned the mandatory message (no queue bound), with
//     errors.Is(err, ErrInvalidMessage) when it was found unsendable and parked unsent, else after
//     the nacks or channel errors attributed to it (the rules below). Parked entries stay in the
//     journal's parked set (journal.Parked, Redrive, DropParked); nothing is dropped silently.
//   - Channel errors: 403, 404, 405, 406 (and 311, 312, 313) close only the channel; the publisher
//     reopens it on the same connection after RetryBackoff, re-declaring the topology (which may
//     create a missing exchange). When exactly one message was in flight it is the culprit and an
//     attempt is recorded against it; otherwise the next channel sends one message at a time, so the
//     next error names its culprit. A culprit is parked at MaxAttempts, at its first 406 (on
//     basic.publish it is about the message itself: a user-id other than the connection's user, a
//     body over max_message_size; a retry cannot pass until an operator changes something, and
//     then the parked message can be re-driven), or at its first 404 or 403 once its exchange has been missing
//     or forbidden for MissingExchangeGrace (then the channel reopens at once: such an exchange costs
//     one channel reopen per message sent there, not MaxAttempts backoffs while everything behind
//     it waits); everything else is retried forever. Every other code, and network errors, count
//     as loss of the connection: reconnect with ReconnectBackoff across URLs, forever, never
//     charged to a message.
//   - Messages that can never be sent (a name, string property or header key over AMQP's 255
//     bytes, headers over one frame, an expiration or delivery mode RabbitMQ refuses) are refused
//     by Publish with ErrInvalidMessage; such an entry found in the journal is parked unsent
//     (ParkedError.Invalid).
//   - Broker alarms: on connection.blocked nothing more is written to the socket (a blocked write
//     could not be interrupted); Publish keeps accepting into the journal; sending resumes on
//     connection.unblocked. Blocked(), Stats().State and MetricBlocked expose it.
//   - Memory is bounded by MaxInFlight, ReadBatch and MaxBuffered, not by the backlog: a million
//     journaled messages during an outage stay on disk. Receipts cost memory only once someone calls
//     Done, Err or Wait on them.
//
// # Concurrency
//
// All methods are safe for concurrent use. Goroutines, all joined by Close:
//
//   - appender: takes messages handed over by Publish/PublishAsync/PublishBatch from a bounded buffer
//     (MaxBuffered) and journals everything waiting in one transaction (group commit);
//   - sender: owns the connection and its channel (internal/amqpseam); dials, declares the
//     topology, reads the journal in pages, publishes with confirms (at most MaxInFlight unconfirmed), drains every
//     amqp091-go notification channel (confirms, returns, close, blocked) with buffers sized so the
//     library never waits on it, records nacks, parks, and advances the receipts' frontier;
//   - deleter: commits the deletes of confirmed entries in batches, off the sender's path, and
//     retries a failed delete with backoff; the sender skips confirmed entries still waiting for
//     their delete, so they are not resent by this Publisher (a new one resends them, same stamps);
//   - callbacks (internal/callbacks): runs OnParked and OnStateChange one at a time, in order, so
//     that a slow callback never delays sending; Close stops it after the sender.
//
// Delivery tags are only compared within the channel that produced them. amqp091-go's automatic
// recovery is not used. Callbacks must not call Close (it waits for them).
//
// # Caveats
//
//   - Close waits for in-flight confirms only until its ctx ends; then the connection is closed under
//     them. Those messages stay journaled (unknown) and are resent by the next Publisher on the
//     journal: the consumer may see them twice.
//   - After Close's ctx ends, a write blocked by a broker alarm is cut by closing the socket
//     (CloseDeadline); Close then returns within about a second.
//   - Memory: the publisher's own heap stays small with any backlog (about 16 MiB measured with
//     1,000,000 journaled messages, 24 MiB while draining them), but the journal's automatic live
//     compaction (journal.Options.AutoCompactMinSize) copies the remaining backlog once half the file
//     is free and allocates tens of MiB while it does.
//   - When Publish's ctx ends while the journal is already writing the message, Publish cannot tell
//     whether it was accepted: the error wraps ErrAcceptUnknown and the receipt's Journaled channel
//     answers later.
//   - Heartbeats are not checked by amqp091-go while the connection is blocked: a broker that
//     disappears during an alarm is noticed only after it unblocks or the TCP connection fails.
//   - NoMandatory turns unroutable messages into silent drops by the broker (confirmed): use it only
//     with an alternate exchange.
//   - A parked outcome's details are remembered for the last 65536 parkings; a receipt of an older
//     parked message first asked about after that reports ErrOutcomeForgotten (with ErrParked). The
//     IDs of parked messages are all remembered (16 bytes per run of consecutive IDs), so a
//     confirmed message is always reported as confirmed.
package publisher
