package pginbox

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

var (
	_ consumer.Store[pgx.Tx] = (*Store)(nil)
	_ consumer.SharedStore   = (*Store)(nil)
)

// Store is the PostgreSQL inbox over pgx: a consumer.Store[pgx.Tx] of consumer.ScopeShared that
// also implements consumer.SharedStore. Any number of consumer processes, on any hosts, may open
// it on the same table: they share one dedup state, and a transactional handler's writes commit
// in the same transaction as the mark that makes its message a duplicate. See the package doc.
//
// A Store is safe for concurrent use. It never closes the pool it was opened on.
type Store struct {
	pool *pgxpool.Pool
	c    *core[pgx.Tx]
}

// Open returns the inbox on pool, creating or migrating its table (Options.Table) first: the
// migration runs in one transaction holding a transaction-level advisory lock derived from the
// table's name, so processes that Open at once wait for each other. A table migrated by a newer
// version of this package is refused with an error wrapping ErrSchemaVersion. Other errors wrap
// consumer.ErrInvalidConfig (bad Options), consumer.ErrStoreUnavailable (the database could not
// be reached) or consumer.ErrStore.
//
// The pool stays the caller's: size it for the consumer's workers (each Commit holds one
// connection for its transaction) plus the handlers' own use, and close it after the Store.
func Open(ctx context.Context, pool *pgxpool.Pool, opts Options) (*Store, error) {
	s := &Store{pool: pool}
	c, err := newCore[pgx.Tx](ctx, pgxDB{pool}, opts)
	if err != nil {
		return nil, err
	}
	s.c = c
	return s, nil
}

// Pool returns the pool the store was opened on.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Claim implements consumer.Store: a shared store admits any number of Runs, so it only checks
// that the store is open (consumer.ErrClosed) and ctx alive. release does nothing.
func (s *Store) Claim(ctx context.Context) (release func(), err error) { return s.c.claim(ctx) }

// Scope implements consumer.Store: consumer.ScopeShared.
func (s *Store) Scope() consumer.Scope { return consumer.ScopeShared }

// DedupConfig implements consumer.SharedStore: Options.Dedup with its defaults.
func (s *Store) DedupConfig() dedup.Config { return s.c.dedupConfig() }

// Peek implements consumer.SharedStore: the committed states of keys (a key without state is
// left out), in one SELECT that locks nothing.
func (s *Store) Peek(ctx context.Context, keys []dedup.Key) ([]consumer.StreamState, error) {
	return s.c.peek(ctx, keys)
}

// Load implements consumer.Store: every stream state in the table, ordered by key. A shared
// store's Run does not need it (it refreshes its cache with Peek); it reads the whole table.
func (s *Store) Load(ctx context.Context) ([]consumer.StreamState, error) { return s.c.load(ctx) }

// Commit implements consumer.Store for a shared store, in one READ COMMITTED transaction per
// attempt:
//
//  1. the distinct keys of the ops with Mark, in dedup.Key order, get a row if they had none
//     (INSERT … ON CONFLICT DO NOTHING) and are locked (SELECT … ORDER BY … FOR UPDATE), in one
//     round trip;
//  2. their states are decoded into a dedup.Tracker of this attempt; each op with Mark is
//     classified (Op.Verdict); only a KindNew op runs its Effect with the transaction and then
//     records its mark, so a stamp committed by any replica, or twice in one batch, comes back
//     KindDuplicate without running; an op without Mark just runs its Effect, if any;
//  3. when Batch.Expire is set, the rows due by then that no other transaction holds are locked
//     (FOR UPDATE SKIP LOCKED, at most Options.ExpireLimit), and the tracker's Expire runs;
//  4. the changed rows are written in one UPDATE (state, expire_at), rows left without state are
//     deleted, and the transaction commits.
//
// Batch.Events is set to the dedup events of what committed, only once COMMIT succeeded;
// Batch.States is ignored. An op whose Effect fails (or panics: consumer.ErrPanic) gets that Err,
// every later op of its Key gets an Err wrapping consumer.ErrSkipped, and the batch reruns
// without them in a new transaction (no savepoints). A serialization failure or deadlock (also
// inside an Effect) reruns the whole batch, up to Options.MaxTxRetries times. A nil return means
// every op with a nil Err is committed, durably (with synchronous_commit on).
//
// Errors wrap consumer.ErrStoreUnavailable (the connection lost or refused, a timeout, ctx's end,
// the server shutting down, retries exhausted: nothing to assume, commit the same batch again),
// together with consumer.ErrCommitUnknown when COMMIT was in flight; consumer.ErrClosed after
// Close; anything else wraps consumer.ErrStore. Concurrent Commits run in parallel, each on its
// own pooled connection.
func (s *Store) Commit(ctx context.Context, b *consumer.Batch[pgx.Tx]) error {
	return s.c.commit(ctx, b)
}

// View implements consumer.Store: fn runs in a read-only transaction (pgx.ReadOnly). fn's error
// is returned as is.
func (s *Store) View(ctx context.Context, fn func(tx pgx.Tx) error) error { return s.c.view(ctx, fn) }

// Close implements consumer.Store: later calls return consumer.ErrClosed; it waits for the calls
// in progress to return. It does not close the pool. Idempotent.
func (s *Store) Close() error { return s.c.close() }

// pgxDB is the pgx side of db.
type pgxDB struct{ pool *pgxpool.Pool }

func (d pgxDB) begin(ctx context.Context, readOnly bool) (txn[pgx.Tx], error) {
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	mode := pgx.ReadWrite
	if readOnly {
		mode = pgx.ReadOnly
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted, AccessMode: mode})
	if err != nil {
		conn.Release()
		return nil, err
	}
	return &pgxTxn{conn: conn, t: tx}, nil
}

func (d pgxDB) read(ctx context.Context, sql string, args []any, scan func(scanner) error) error {
	rows, err := d.pool.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	return eachRow(rows, scan)
}

func (pgxDB) byteas(v [][]byte) any { return v }

func (pgxDB) int8s(v []int64, valid []bool) any {
	out := make([]pgtype.Int8, len(v))
	for i := range v {
		out[i] = pgtype.Int8{Int64: v[i], Valid: valid[i]}
	}
	return out
}

func eachRow(rows pgx.Rows, scan func(scanner) error) error {
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// pgxTxn holds its pooled connection for the transaction's life, so that whether the connection
// broke can be read before it goes back to the pool.
type pgxTxn struct {
	conn     *pgxpool.Conn
	t        pgx.Tx
	released bool
	closed   bool // the connection was closed when released
}

func (t *pgxTxn) tx() pgx.Tx { return t.t }

func (t *pgxTxn) exec(ctx context.Context, sql string, args ...any) error {
	_, err := t.t.Exec(ctx, sql, args...)
	return err
}

func (t *pgxTxn) query(ctx context.Context, sql string, args []any, scan func(scanner) error) error {
	rows, err := t.t.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	return eachRow(rows, scan)
}

func (t *pgxTxn) execQuery(ctx context.Context, execSQL string, execArgs []any, querySQL string, queryArgs []any, scan func(scanner) error) error {
	b := &pgx.Batch{}
	b.Queue(execSQL, execArgs...)
	b.Queue(querySQL, queryArgs...)
	br := t.t.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return err
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return err
	}
	if err := eachRow(rows, scan); err != nil {
		_ = br.Close()
		return err
	}
	return br.Close()
}

func (t *pgxTxn) commit(ctx context.Context) error {
	err := t.t.Commit(ctx)
	t.release()
	return err
}

func (t *pgxTxn) rollback() {
	if t.released {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = t.t.Rollback(ctx)
	t.release()
}

func (t *pgxTxn) release() {
	if t.released {
		return
	}
	t.closed = t.conn.Conn().IsClosed()
	t.released = true
	t.conn.Release()
}

func (t *pgxTxn) broken() bool {
	if t.released {
		return t.closed
	}
	return t.conn.Conn().IsClosed()
}
