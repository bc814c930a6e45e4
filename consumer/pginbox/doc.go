// Package pginbox is the PostgreSQL inbox: a consumer.Store of consumer.ScopeShared that keeps
// the consumer's dedup state in the service's own PostgreSQL database, so that any number of
// consumer processes on any hosts share one dedup state, and a transactional handler's writes
// commit in the same transaction as the mark that makes its message a duplicate.
//
//	pool, _ := pgxpool.New(ctx, "postgres://app@db/app")
//	inbox, err := pginbox.Open(ctx, pool, pginbox.Options{}) // creates or migrates the table
//	c, err := consumer.NewWithStore(cfg, inbox)              // a Consumer[pgx.Tx]
//	err = c.RunTx(ctx, func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
//		_, err := tx.Exec(ctx, `INSERT INTO orders ...`, ...) // commits with the dedup mark, or not at all
//		return err
//	})
//
// Store is the pgx (pgxpool) form, a consumer.Store[pgx.Tx]; SQLStore (OpenSQL) is the same over
// database/sql, a consumer.Store[*sql.Tx]. Importing package consumer alone does not pull pgx.
//
// # Schema
//
// One row per stream (source, stream), whatever the traffic: the table grows with streams.
//
//	CREATE TABLE rabbitkit_inbox (
//		source     bytea NOT NULL,             -- the stamp's source, its bytes
//		stream     bytea NOT NULL,             -- the stamp's stream, its bytes
//		state      bytea,                      -- dedup.Tracker.AppendState of the stream (NULL only
//		                                       -- inside the transaction that inserted the row)
//		expire_at  timestamptz,                -- when the stream next needs Expire (an open gap's
//		                                       -- grace end, an old epoch's or the stream's retention):
//		                                       -- dedup.Tracker.NextExpiry; NULL: nothing time-driven
//		updated_at timestamptz NOT NULL DEFAULT now(),
//		PRIMARY KEY (source, stream)
//	) WITH (fillfactor = 70);
//	CREATE INDEX rabbitkit_inbox_expire_at_idx ON rabbitkit_inbox (expire_at) WHERE expire_at IS NOT NULL;
//	CREATE TABLE rabbitkit_inbox_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(), note text NOT NULL);
//
// Source and stream are bytea, not text: a stamp may carry any bytes (NUL and invalid UTF-8
// included, which text refuses), and bytea compares bytewise, exactly like Go strings, so the
// SQL order of the primary key is dedup.Key's order with no collation involved. Read them with
// convert_from(stream, 'UTF8'). The state is opaque to SQL; its encoding is dedup's (versioned,
// with a CRC-32C): a row that does not decode fails the Commit that loads it with an error
// wrapping consumer.ErrStore that names the row.
//
// Open migrates the schema in one transaction holding pg_advisory_xact_lock(k), k derived from the
// table's name: concurrent Opens wait for each other, and the lock is the transaction's, so no
// pooled connection keeps it. The _schema table records each version applied; a table migrated
// by a newer version of this package is refused (ErrSchemaVersion).
//
// # Transactions
//
// Commit runs one READ COMMITTED transaction per attempt: rows for the batch's new streams are
// inserted and every row of the batch is locked with SELECT … FOR UPDATE, both in dedup.Key order
// (one round trip), so replicas never deadlock on each other's rows; the states are decoded into a
// dedup.Tracker of that attempt, which classifies each marked op: only a new stamp's handler runs,
// with the transaction; the changed rows are written in one UPDATE and the transaction commits.
// A handler that fails is excluded and the batch reruns without it (no savepoints); a
// serialization failure or deadlock reruns the whole batch (Options.MaxTxRetries). Batch.Expire
// locks the rows due (expire_at <= Expire) FOR UPDATE SKIP LOCKED, so each gap is reported by the
// one replica whose transaction commits the report, and a number another replica committed is in
// the row, never a gap. Peek reads states without locks. See docs/DESIGN.md, "consumer/pginbox".
//
// # Errors
//
// Commit's errors wrap consumer.ErrStoreUnavailable when retrying is the answer (connection lost
// or refused, SQLSTATE class 08 or 53, 57P01–57P03, 57014, 55P03, a timeout, ctx's end,
// retries exhausted), together with consumer.ErrCommitUnknown when the connection was lost while
// COMMIT was in flight or the server answered 40003: the batch may have committed, and committing
// it again settles it (what had committed comes back KindDuplicate). Anything else wraps
// consumer.ErrStore.
//
// # Clocks
//
// Times in the state (when a gap was noticed, an epoch's last commit) come from the clock of the
// process that committed; Batch.Expire is compared with them. Replicas' clocks should agree to
// well within Config.GapGrace (NTP does).
package pginbox
