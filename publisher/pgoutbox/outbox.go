package pgoutbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
)

// Outbox is the PostgreSQL transactional outbox of one source. Every replica of the service
// opens it on the same tables; they all write with PublishTx, and one of them at a time (the
// holder of the lease) relays with Relay. Safe for concurrent use. It never closes the pool.
type Outbox struct {
	pool *pgxpool.Pool
	opts Options
	n    *names
	log  *slog.Logger
	m    metrics.Recorder

	epoch    atomic.Int64  // the writers' epoch as last read from the meta row
	bumped   atomic.Bool   // an epoch was started by this process because the identity changed
	lastRID  atomic.Uint64 // the highest relay id assigned, as last seen
	relaying atomic.Int32  // Relay calls of this Outbox holding the lease

	chMu sync.Mutex
	ch   chan struct{} // closed when new rows may be there (poll, NOTIFY, Redrive)

	backlog atomic.Pointer[journal.Backlog] // the relay's cached gauges

	sqlPublish, sqlPublishNotify, sqlCounters, sqlInsert string
}

// Open returns the outbox of opts.Source on pool: it creates or migrates the tables (in one
// transaction under pg_advisory_xact_lock, internal/pgmigrate, the inbox's machinery), creates
// the meta row (the source, epoch 1, the database's identity) or checks it: a table of another
// source is refused (ErrSourceMismatch), and a database whose system identifier or timeline
// differs from the recorded one (a restored backup, a failover) gets a new epoch, logged at
// ERROR (see EpochBumped).
func Open(ctx context.Context, pool *pgxpool.Pool, opts Options) (*Outbox, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	n, err := newNames(opts.Table)
	if err != nil {
		return nil, err
	}
	if opts.Owner == "" {
		host, _ := os.Hostname()
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		opts.Owner = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
	}
	o := &Outbox{pool: pool, opts: opts, n: n, log: opts.Logger, m: metrics.With(opts.Metrics, metrics.Label{Name: LabelTable, Value: opts.Table}), ch: make(chan struct{})}
	o.sql()
	err = pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		if err := migrate(ctx, tx, n, func(msg string, args ...any) { o.log.Info(msg, args...) }); err != nil {
			return err
		}
		return o.checkIdentity(ctx, tx, "open")
	})
	if err != nil {
		return nil, fmt.Errorf("pgoutbox: open %s: %w", n.table, err)
	}
	return o, nil
}

func (o *Outbox) sql() {
	n := o.n
	o.sqlPublish = `WITH m AS (SELECT epoch FROM ` + n.metaT + ` WHERE k = 1),
		c AS (INSERT INTO ` + n.countersT + ` AS c (epoch, stream, next) SELECT m.epoch, $1, 1 FROM m
			ON CONFLICT (epoch, stream) DO UPDATE SET next = c.next + 1 RETURNING epoch, next)
		INSERT INTO ` + n.t + ` (epoch, stream, seq, exchange, routing_key, mandatory, props, headers, body)
		SELECT c.epoch, $1, c.next, $2, $3, $4, $5, $6, $7 FROM c RETURNING epoch, seq`
	o.sqlPublishNotify = o.sqlPublish + `, pg_notify($8, '') IS NULL`
	o.sqlCounters = `WITH m AS (SELECT epoch FROM ` + n.metaT + ` WHERE k = 1)
		INSERT INTO ` + n.countersT + ` AS c (epoch, stream, next)
		SELECT m.epoch, s.stream, s.n FROM m, unnest($1::bytea[], $2::int8[]) AS s(stream, n) ORDER BY s.stream
		ON CONFLICT (epoch, stream) DO UPDATE SET next = c.next + excluded.next RETURNING epoch, stream, next`
	o.sqlInsert = `INSERT INTO ` + n.t + ` (epoch, stream, seq, exchange, routing_key, mandatory, props, headers, body)
		SELECT $1, u.stream, u.seq, u.x, u.rk, u.m, u.p, u.h, u.b
		FROM unnest($2::bytea[], $3::int8[], $4::bytea[], $5::bytea[], $6::bool[], $7::bytea[], $8::bytea[], $9::bytea[])
			WITH ORDINALITY AS u(stream, seq, x, rk, m, p, h, b, ord) ORDER BY u.ord`
}

// Source is the outbox's source (rk-source).
func (o *Outbox) Source() string { return o.opts.Source }

// Epoch is the epoch new messages get, as last read from the database (at Open, and by a
// relay's lease renewals).
func (o *Outbox) Epoch() int64 { return o.epoch.Load() }

// EpochBumped reports whether this process started a new epoch because the database's system
// identifier or timeline differed from the recorded one.
func (o *Outbox) EpochBumped() bool { return o.bumped.Load() }

// Relaying reports whether a Relay call of this Outbox is running its sender (it holds the lease).
func (o *Outbox) Relaying() bool { return o.relaying.Load() > 0 }

// identity reads the database's system identifier and current timeline, in a savepoint (the
// functions may be refused to a role that is not superuser or pg_monitor... then known is false).
func (o *Outbox) identity(ctx context.Context, tx pgx.Tx) (sysid, timeline int64, known bool) {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return 0, 0, false
	}
	err = sp.QueryRow(ctx, `SELECT (SELECT system_identifier FROM pg_control_system()),
		greatest((SELECT timeline_id FROM pg_control_checkpoint()),
			('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint)`).Scan(&sysid, &timeline)
	if err != nil {
		_ = sp.Rollback(ctx)
		o.log.Warn("pgoutbox: cannot read the database's identity (pg_control_system); a restored or failed-over database will not be detected", "err", err)
		return 0, 0, false
	}
	_ = sp.Commit(ctx)
	return sysid, timeline, true
}

// checkIdentity creates or checks the meta row in tx (locking it), and starts a new epoch when
// the database's identity changed.
func (o *Outbox) checkIdentity(ctx context.Context, tx pgx.Tx, when string) error {
	sysid, timeline, known := o.identity(ctx, tx)
	var (
		src           []byte
		epoch         int64
		oldSys, oldTL *int64
		lastRID       int64
	)
	err := tx.QueryRow(ctx, `SELECT source, epoch, sysid, timeline, last_rid FROM `+o.n.metaT+` WHERE k = 1 FOR UPDATE`).
		Scan(&src, &epoch, &oldSys, &oldTL, &lastRID)
	if errors.Is(err, pgx.ErrNoRows) {
		var s, tl *int64
		if known {
			s, tl = &sysid, &timeline
		}
		_, err = tx.Exec(ctx, `INSERT INTO `+o.n.metaT+` (k, source, epoch, sysid, timeline) VALUES (1, $1, 1, $2, $3)`, []byte(o.opts.Source), s, tl)
		if err != nil {
			return err
		}
		o.epoch.Store(1)
		return nil
	}
	if err != nil {
		return err
	}
	if string(src) != o.opts.Source {
		return fmt.Errorf("%w: table %s holds source %q, not %q", ErrSourceMismatch, o.n.table, src, o.opts.Source)
	}
	o.lastRID.Store(uint64(max(lastRID, 0)))
	if !known {
		o.epoch.Store(epoch)
		return nil
	}
	if oldSys == nil || oldTL == nil {
		_, err = tx.Exec(ctx, `UPDATE `+o.n.metaT+` SET sysid = $1, timeline = $2 WHERE k = 1`, sysid, timeline)
		o.epoch.Store(epoch)
		return err
	}
	if *oldSys == sysid && *oldTL == timeline {
		o.epoch.Store(epoch)
		return nil
	}
	if epoch == math.MaxInt64 {
		return fmt.Errorf("pgoutbox: epoch exhausted")
	}
	note := fmt.Sprintf("database identity changed at %s: system identifier %d -> %d, timeline %d -> %d", when, *oldSys, sysid, *oldTL, timeline)
	if _, err := tx.Exec(ctx, `UPDATE `+o.n.metaT+` SET epoch = $1, sysid = $2, timeline = $3, bumped_at = now(), bump_note = $4 WHERE k = 1`,
		epoch+1, sysid, timeline, note); err != nil {
		return err
	}
	o.log.Error("pgoutbox: the database was restored or failed over; starting a new epoch so that consumers do not drop new messages as duplicates of reused sequence numbers",
		"table", o.n.table, "source", o.opts.Source, "old_epoch", epoch, "new_epoch", epoch+1, "detail", note)
	o.m.Add(MetricEpochBumps, 1)
	o.bumped.Store(true)
	o.epoch.Store(epoch + 1)
	return nil
}

// PublishTx stamps msg and inserts it into the outbox in the caller's transaction tx, and
// returns its stamp. The message is accepted when tx commits, and gone if it rolls back: the
// relay sends it only once committed. msg is validated exactly as publisher.Publish does
// (errors wrap publisher.ErrInvalidMessage); any database error is returned as is, and leaves tx
// aborted, as every failed statement does.
//
// The stream's next sequence number is taken under the row lock of the stream's counter
// (<table>_counters, INSERT … ON CONFLICT DO UPDATE), held until tx ends: concurrent
// transactions publishing to one stream serialize there, the second waiting for the first to
// commit or roll back, so that sequence numbers are never skipped and commit order is seq order
// within a stream. Keep such transactions short, or spread the load over streams. In REPEATABLE
// READ or SERIALIZABLE transactions a concurrent publish to the same stream fails with 40001:
// retry the transaction. A transaction that publishes to several streams one by one can deadlock
// (40P01) with another taking them in another order; PublishBatchTx locks them in sorted order.
func (o *Outbox) PublishTx(ctx context.Context, tx pgx.Tx, msg publisher.Message) (protocol.Stamp, error) {
	q, args, stream, err := o.publishArgs(&msg)
	if err != nil {
		return protocol.Stamp{}, err
	}
	st := protocol.Stamp{Source: o.opts.Source, Stream: stream}
	if err := o.scanStamp(tx.QueryRow(ctx, q, args...), &st); err != nil {
		return protocol.Stamp{}, err
	}
	return st, nil
}

// publishArgs validates msg and returns PublishTx's statement, its arguments and the stream.
func (o *Outbox) publishArgs(msg *publisher.Message) (string, []any, string, error) {
	e, err := publisher.NewEntry(o.opts.Source, math.MaxInt64, msg, !o.opts.NoMandatory)
	if err != nil {
		return "", nil, "", err
	}
	h, err := journal.EncodeHeaders(e.Headers)
	if err != nil {
		return "", nil, "", fmt.Errorf("%w: headers: %w", publisher.ErrInvalidMessage, err)
	}
	args := []any{[]byte(e.Stream), []byte(e.Exchange), []byte(e.RoutingKey), e.Mandatory, encodeProps(&e.Properties), h, body(e.Body)}
	q := o.sqlPublish
	if o.opts.Notify {
		q = o.sqlPublishNotify
		args = append(args, o.n.channel)
	}
	return q, args, e.Stream, nil
}

// scanStamp reads PublishTx's result row into st's Epoch and Seq.
func (o *Outbox) scanStamp(row pgx.Row, st *protocol.Stamp) error {
	var dummy bool
	dest := []any{&st.Epoch, &st.Seq}
	if o.opts.Notify {
		dest = append(dest, &dummy)
	}
	if err := row.Scan(dest...); err != nil {
		return fmt.Errorf("pgoutbox: publish: %w", err)
	}
	return nil
}

// body never passes nil for a NOT NULL column.
func body(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// PublishBatchTx is PublishTx for several messages, in two statements: the counters of their
// streams are locked in sorted order, and the rows inserted in msgs' order. All or nothing with
// tx. It returns the stamps in msgs' order.
func (o *Outbox) PublishBatchTx(ctx context.Context, tx pgx.Tx, msgs []publisher.Message) ([]protocol.Stamp, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	es := make([]*journal.Entry, len(msgs))
	hs := make([][]byte, len(msgs))
	counts := map[string]int64{}
	for i := range msgs {
		e, err := publisher.NewEntry(o.opts.Source, math.MaxInt64, &msgs[i], !o.opts.NoMandatory)
		if err != nil {
			return nil, fmt.Errorf("message %d: %w", i, err)
		}
		if hs[i], err = journal.EncodeHeaders(e.Headers); err != nil {
			return nil, fmt.Errorf("message %d: %w: headers: %w", i, publisher.ErrInvalidMessage, err)
		}
		es[i] = e
		counts[e.Stream]++
	}
	streams := make([][]byte, 0, len(counts))
	ns := make([]int64, 0, len(counts))
	keys := make([]string, 0, len(counts))
	for s := range counts {
		keys = append(keys, s)
	}
	slices.Sort(keys)
	for _, s := range keys {
		streams, ns = append(streams, []byte(s)), append(ns, counts[s])
	}
	rows, err := tx.Query(ctx, o.sqlCounters, streams, ns)
	if err != nil {
		return nil, fmt.Errorf("pgoutbox: publish: %w", err)
	}
	next := map[string]int64{} // per stream, the seq of its next message in this batch
	var epoch int64
	for rows.Next() {
		var st []byte
		var last int64
		if err := rows.Scan(&epoch, &st, &last); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pgoutbox: publish: %w", err)
		}
		next[string(st)] = last - counts[string(st)] + 1
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgoutbox: publish: %w", err)
	}
	out := make([]protocol.Stamp, len(es))
	stA, seqA, xA, rkA, mA, pA, bA := make([][]byte, len(es)), make([]int64, len(es)), make([][]byte, len(es)),
		make([][]byte, len(es)), make([]bool, len(es)), make([][]byte, len(es)), make([][]byte, len(es))
	for i, e := range es {
		seq := next[e.Stream]
		next[e.Stream] = seq + 1
		out[i] = protocol.Stamp{Source: o.opts.Source, Epoch: epoch, Stream: e.Stream, Seq: seq}
		stA[i], seqA[i], xA[i], rkA[i], mA[i], pA[i], bA[i] = []byte(e.Stream), seq, []byte(e.Exchange), []byte(e.RoutingKey),
			e.Mandatory, encodeProps(&e.Properties), body(e.Body)
	}
	if _, err := tx.Exec(ctx, o.sqlInsert, epoch, stA, seqA, xA, rkA, mA, pA, hs, bA); err != nil {
		return nil, fmt.Errorf("pgoutbox: publish: %w", err)
	}
	if o.opts.Notify {
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, o.n.channel); err != nil {
			return nil, fmt.Errorf("pgoutbox: publish: %w", err)
		}
	}
	return out, nil
}

func randHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// wake closes the current changed channel.
func (o *Outbox) wake() {
	o.chMu.Lock()
	close(o.ch)
	o.ch = make(chan struct{})
	o.chMu.Unlock()
}

func (o *Outbox) changed() <-chan struct{} {
	o.chMu.Lock()
	defer o.chMu.Unlock()
	return o.ch
}
