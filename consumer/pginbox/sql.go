package pginbox

import (
	"context"
	"database/sql"
	"encoding/hex"
	"strconv"
	"strings"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

var (
	_ consumer.Store[*sql.Tx] = (*SQLStore)(nil)
	_ consumer.SharedStore    = (*SQLStore)(nil)
)

// SQLStore is the PostgreSQL inbox over database/sql: a consumer.Store[*sql.Tx] of
// consumer.ScopeShared with the same table, schema, transactions and guarantees as Store, for
// applications whose handlers use *sql.Tx. It works with any PostgreSQL driver (pgx's
// github.com/jackc/pgx/v5/stdlib, lib/pq): array parameters are sent as text literals.
// Differences from Store: the INSERT and the SELECT FOR UPDATE of a Commit take two round trips
// instead of one, and whether a connection broke is inferred from the error, so a few more
// failures may be reported as consumer.ErrStoreUnavailable rather than a handler's error.
//
// Error classification by SQLSTATE needs the driver's error to be *pgconn.PgError (pgx stdlib)
// or to have a SQLState() string method; otherwise server errors wrap consumer.ErrStore.
type SQLStore struct {
	db *sql.DB
	c  *core[*sql.Tx]
}

// OpenSQL is Open for a *sql.DB; see Open. The DB stays the caller's (SQLStore.Close does not close it).
func OpenSQL(ctx context.Context, db *sql.DB, opts Options) (*SQLStore, error) {
	c, err := newCore[*sql.Tx](ctx, sqlDB{db}, opts)
	if err != nil {
		return nil, err
	}
	return &SQLStore{db: db, c: c}, nil
}

// DB returns the database the store was opened on.
func (s *SQLStore) DB() *sql.DB { return s.db }

// Claim implements consumer.Store; see Store.Claim.
func (s *SQLStore) Claim(ctx context.Context) (release func(), err error) { return s.c.claim(ctx) }

// Scope implements consumer.Store: consumer.ScopeShared.
func (s *SQLStore) Scope() consumer.Scope { return consumer.ScopeShared }

// DedupConfig implements consumer.SharedStore; see Store.DedupConfig.
func (s *SQLStore) DedupConfig() dedup.Config { return s.c.dedupConfig() }

// Peek implements consumer.SharedStore; see Store.Peek.
func (s *SQLStore) Peek(ctx context.Context, keys []dedup.Key) ([]consumer.StreamState, error) {
	return s.c.peek(ctx, keys)
}

// Load implements consumer.Store; see Store.Load.
func (s *SQLStore) Load(ctx context.Context) ([]consumer.StreamState, error) { return s.c.load(ctx) }

// Commit implements consumer.Store; see Store.Commit.
func (s *SQLStore) Commit(ctx context.Context, b *consumer.Batch[*sql.Tx]) error {
	return s.c.commit(ctx, b)
}

// View implements consumer.Store: fn runs in a read-only transaction; its error is returned as is.
func (s *SQLStore) View(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return s.c.view(ctx, fn)
}

// Close implements consumer.Store; see Store.Close. It does not close the DB.
func (s *SQLStore) Close() error { return s.c.close() }

type sqlDB struct{ db *sql.DB }

func (d sqlDB) begin(ctx context.Context, readOnly bool) (txn[*sql.Tx], error) {
	tx, err := d.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted, ReadOnly: readOnly})
	if err != nil {
		return nil, err
	}
	return &sqlTxn{t: tx}, nil
}

func (d sqlDB) read(ctx context.Context, query string, args []any, scan func(scanner) error) error {
	rows, err := d.db.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	return eachSQLRow(rows, scan)
}

func (sqlDB) byteas(v [][]byte) any { return byteaArrayLiteral(v) }

func (sqlDB) int8s(v []int64, valid []bool) any { return int8ArrayLiteral(v, valid) }

// byteaArrayLiteral writes v as a bytea[] literal in hex form: {"\\x0a0b","\\x"}.
func byteaArrayLiteral(v [][]byte) string {
	n := 2
	for _, b := range v {
		n += 6 + 2*len(b)
	}
	var sb strings.Builder
	sb.Grow(n)
	sb.WriteByte('{')
	buf := make([]byte, 0, 64)
	for i, b := range v {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`"\\x`)
		buf = hex.AppendEncode(buf[:0], b)
		sb.Write(buf)
		sb.WriteByte('"')
	}
	sb.WriteByte('}')
	return sb.String()
}

// int8ArrayLiteral writes v as an int8[] literal, NULL where !valid.
func int8ArrayLiteral(v []int64, valid []bool) string {
	buf := make([]byte, 0, 2+21*len(v))
	buf = append(buf, '{')
	for i, x := range v {
		if i > 0 {
			buf = append(buf, ',')
		}
		if !valid[i] {
			buf = append(buf, "NULL"...)
			continue
		}
		buf = strconv.AppendInt(buf, x, 10)
	}
	return string(append(buf, '}'))
}

func eachSQLRow(rows *sql.Rows, scan func(scanner) error) error {
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

type sqlTxn struct {
	t    *sql.Tx
	last error // the last statement's error, for broken
}

func (t *sqlTxn) tx() *sql.Tx { return t.t }

func (t *sqlTxn) note(err error) error {
	if err != nil {
		t.last = err
	}
	return err
}

func (t *sqlTxn) exec(ctx context.Context, query string, args ...any) error {
	_, err := t.t.ExecContext(ctx, query, args...)
	return t.note(err)
}

func (t *sqlTxn) query(ctx context.Context, query string, args []any, scan func(scanner) error) error {
	rows, err := t.t.QueryContext(ctx, query, args...)
	if err != nil {
		return t.note(err)
	}
	return t.note(eachSQLRow(rows, scan))
}

func (t *sqlTxn) execQuery(ctx context.Context, execSQL string, execArgs []any, querySQL string, queryArgs []any, scan func(scanner) error) error {
	if err := t.exec(ctx, execSQL, execArgs...); err != nil {
		return err
	}
	return t.query(ctx, querySQL, queryArgs, scan)
}

func (t *sqlTxn) commit(context.Context) error { return t.note(t.t.Commit()) }

func (t *sqlTxn) rollback() { _ = t.t.Rollback() }

func (t *sqlTxn) broken() bool {
	if t.last == nil {
		return false
	}
	code, _ := sqlState(t.last)
	return code == "" && connError(t.last)
}
