package ledger

import (
	"context"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// DefaultPGTable is the ledger table of NewPG("").
const DefaultPGTable = "rabbitkit_example_ledger"

// PG is the ledger as a PostgreSQL table for the consumer's PostgreSQL inbox (consumer/pginbox):
// the handler inserts one row per message it applies, in the inbox's transaction, and the table
// has no unique constraint, so nothing but the inbox's dedup keeps a stamp to one row. Dump counts
// the rows of each stamp: every count must be exactly 1.
type PG struct {
	table string // quoted
}

var pgIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,47}$`)

// NewPG returns the ledger kept in table (default DefaultPGTable), an unqualified identifier.
func NewPG(table string) (*PG, error) {
	if table == "" {
		table = DefaultPGTable
	}
	if !pgIdent.MatchString(table) {
		return nil, fmt.Errorf("ledger: table name %q: letters, digits and underscores, at most 48 bytes", table)
	}
	return &PG{table: pgx.Identifier{table}.Sanitize()}, nil
}

// Create creates the table if it does not exist. Several processes may call it at once.
func (l *PG) Create(ctx context.Context, pool *pgxpool.Pool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("ledger: create: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	// CREATE TABLE IF NOT EXISTS races with itself (a unique violation on pg_type): serialize.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "rabbitkit-ledger:"+l.table); err != nil {
		return fmt.Errorf("ledger: create: %w", err)
	}
	// id records the order of the inserts: with one consumer per partition at a time, a stream's
	// rows must come out in seq order (the partitioned test checks it).
	_, err = tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+l.table+` (
		id bigserial, source text NOT NULL, epoch bigint NOT NULL, stream text NOT NULL, seq bigint NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`)
	if err != nil {
		return fmt.Errorf("ledger: create: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("ledger: create: %w", err)
	}
	return nil
}

// Insert adds the row of s in tx: it exists exactly when tx commits.
func (l *PG) Insert(ctx context.Context, tx pgx.Tx, s protocol.Stamp) error {
	_, err := tx.Exec(ctx, `INSERT INTO `+l.table+` (source, epoch, stream, seq) VALUES ($1, $2, $3, $4)`,
		s.Source, s.Epoch, s.Stream, s.Seq)
	if err != nil {
		return fmt.Errorf("ledger: insert %s: %w", s, err)
	}
	return nil
}

// Dump calls fn for every stamp in the table with its number of rows, ordered by stamp.
func (l *PG) Dump(ctx context.Context, pool *pgxpool.Pool, fn func(s protocol.Stamp, count int64) error) error {
	rows, err := pool.Query(ctx, `SELECT source, epoch, stream, seq, count(*) FROM `+l.table+`
		GROUP BY source, epoch, stream, seq ORDER BY source COLLATE "C", epoch, stream COLLATE "C", seq`)
	if err != nil {
		return fmt.Errorf("ledger: dump: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var s protocol.Stamp
		var n int64
		if err := rows.Scan(&s.Source, &s.Epoch, &s.Stream, &s.Seq, &n); err != nil {
			return fmt.Errorf("ledger: dump: %w", err)
		}
		if err := fn(s, n); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("ledger: dump: %w", err)
	}
	return nil
}
