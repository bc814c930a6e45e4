// Package pgmigrate applies versioned schema steps to PostgreSQL, shared by the PostgreSQL inbox
// (consumer/pginbox) and outbox (publisher/pgoutbox): one machinery, one behaviour.
//
// Apply runs inside a transaction the caller began (and commits): it takes
// pg_advisory_xact_lock(Plan.LockKey), so that processes migrating the same table at once wait for
// each other and the lock ends with the transaction (it is never left on a pooled connection);
// creates the record table (Plan.RecordTable: version, applied_at, note) if needed; refuses a
// record newer than the last step (Plan.ErrNewer); and applies every step above the recorded
// version, in order, each once, recording it.
package pgmigrate

import (
	"context"
	"fmt"
	"hash/fnv"
)

// Tx is the open transaction Apply runs in: pgx or database/sql, through a small adapter.
type Tx interface {
	Exec(ctx context.Context, sql string, args ...any) error
	// QueryRow runs sql, which returns exactly one row, and scans it into dest.
	QueryRow(ctx context.Context, sql string, args []any, dest ...any) error
}

// Step is one version of a schema: its statements, already formatted with the quoted names.
// Released steps are never changed; new ones are appended.
type Step struct {
	Version int
	Note    string
	SQL     []string
}

// Plan is what Apply migrates.
type Plan struct {
	Table       string // the table's name as configured, for errors and logs
	RecordTable string // quoted name of the table recording applied versions (<table>_schema)
	LockKey     int64  // pg_advisory_xact_lock key (LockKey)
	Steps       []Step // in version order
	// ErrNewer is wrapped by the error for a table migrated by a newer version than Steps knows.
	ErrNewer error
	// Log is called once per applied step (may be nil). Prefix starts its message.
	Log    func(msg string, args ...any)
	Prefix string
}

// LockKey derives the advisory lock key of a table from a namespace (the package) and the
// table's schema and name.
func LockKey(namespace, schema, table string) int64 {
	h := fnv.New64a()
	h.Write([]byte(namespace + ":" + schema + "." + table))
	return int64(h.Sum64())
}

// Latest is the last step's version (0 without steps).
func (p Plan) Latest() int {
	if len(p.Steps) == 0 {
		return 0
	}
	return p.Steps[len(p.Steps)-1].Version
}

// Apply migrates p in tx (see the package doc). It does not commit; on error the caller rolls back.
// It returns the version found before and the version reached.
func Apply(ctx context.Context, tx Tx, p Plan) (from, to int, err error) {
	if err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, p.LockKey); err != nil {
		return 0, 0, err
	}
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, []any{p.RecordTable}, &exists); err != nil {
		return 0, 0, err
	}
	if !exists {
		if err := tx.Exec(ctx, `CREATE TABLE `+p.RecordTable+` (
			version    integer PRIMARY KEY,
			applied_at timestamptz NOT NULL DEFAULT now(),
			note       text NOT NULL
		)`); err != nil {
			return 0, 0, err
		}
	}
	current := 0
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+p.RecordTable, nil, &current); err != nil {
		return 0, 0, err
	}
	latest := p.Latest()
	if current > latest {
		return current, current, fmt.Errorf("%w: table %s is at schema version %d, this binary knows up to %d", p.ErrNewer, p.Table, current, latest)
	}
	for _, m := range p.Steps {
		if m.Version <= current {
			continue
		}
		for _, stmt := range m.SQL {
			if err := tx.Exec(ctx, stmt); err != nil {
				return current, current, fmt.Errorf("migration %d: %w", m.Version, err)
			}
		}
		if err := tx.Exec(ctx, `INSERT INTO `+p.RecordTable+` (version, note) VALUES ($1, $2)`, m.Version, m.Note); err != nil {
			return current, current, err
		}
		if p.Log != nil {
			p.Log(p.Prefix+"migrated", "table", p.Table, "version", m.Version, "note", m.Note)
		}
	}
	return current, max(current, latest), nil
}
