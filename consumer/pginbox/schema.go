package pginbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/internal/pgmigrate"
)

// ErrSchemaVersion is returned by Open and OpenSQL when the table was migrated by a newer version
// of this package than the running one: its schema may have changed in a way this version does
// not understand, so it refuses to touch it. Upgrade the binary, or use another Options.Table.
var ErrSchemaVersion = errors.New("pginbox: the inbox table was migrated by a newer version of rabbitkit")

// migration is one step of the schema. %[1]s is the quoted table, %[2]s the quoted name of its
// expire_at index, %[3]s and %[4]s the quoted members and leases tables of partitioned groups. Steps are applied in order, each once, inside the Open transaction.
type migration struct {
	version int
	note    string
	sql     []string
}

// migrations is the schema's history. Append only: a released step is never changed.
var migrations = []migration{
	{1, "inbox: one row per (source, stream)", []string{
		`CREATE TABLE %[1]s (
			source     bytea NOT NULL,
			stream     bytea NOT NULL,
			state      bytea,
			expire_at  timestamptz,
			updated_at timestamptz NOT NULL DEFAULT now(),
			PRIMARY KEY (source, stream)
		) WITH (fillfactor = 70)`,
		`CREATE INDEX %[2]s ON %[1]s (expire_at) WHERE expire_at IS NOT NULL`,
	}},
	{2, "partitioned groups: members and leases (lease.go)", []string{
		`CREATE TABLE %[3]s (
			grp     text NOT NULL,
			member  text NOT NULL,
			expires timestamptz NOT NULL,
			PRIMARY KEY (grp, member)
		)`,
		`CREATE TABLE %[4]s (
			grp     text NOT NULL,
			part    integer NOT NULL,
			owner   text NOT NULL DEFAULT '',
			expires timestamptz NOT NULL DEFAULT '-infinity',
			PRIMARY KEY (grp, part)
		)`,
	}},
}

// SchemaVersion is the schema version this package migrates to.
var SchemaVersion = migrations[len(migrations)-1].version

// migrate brings the table to SchemaVersion in one transaction holding pg_advisory_xact_lock of a
// key derived from the table's name (internal/pgmigrate, shared with the PostgreSQL outbox):
// concurrent Opens of the same table wait for each other, and the lock ends with the transaction
// (it is never left on a pooled connection).
func migrate[T any](ctx context.Context, d db[T], q *queries, logf func(msg string, args ...any)) (err error) {
	tx, err := d.begin(ctx, false)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.rollback()
		}
	}()
	// CREATE INDEX takes no schema: the index goes into its table's.
	index := pgx.Identifier{q.baseName + "_expire_at_idx"}.Sanitize()
	steps := make([]pgmigrate.Step, len(migrations))
	for i, m := range migrations {
		steps[i] = pgmigrate.Step{Version: m.version, Note: m.note}
		for _, stmt := range m.sql {
			steps[i].SQL = append(steps[i].SQL, fmt.Sprintf(stmt, q.t, index, q.membersT, q.leasesT))
		}
	}
	if _, _, err := pgmigrate.Apply(ctx, migTx[T]{tx}, pgmigrate.Plan{
		Table: q.table, RecordTable: q.schemaT, LockKey: q.lockKey, Steps: steps,
		ErrNewer: ErrSchemaVersion, Log: logf, Prefix: "pginbox: ",
	}); err != nil {
		return err
	}
	return tx.commit(ctx)
}

// migTx is a txn as pgmigrate.Tx.
type migTx[T any] struct{ tx txn[T] }

func (m migTx[T]) Exec(ctx context.Context, sql string, args ...any) error {
	return m.tx.exec(ctx, sql, args...)
}

func (m migTx[T]) QueryRow(ctx context.Context, sql string, args []any, dest ...any) error {
	return m.tx.query(ctx, sql, args, func(s scanner) error { return s.Scan(dest...) })
}
