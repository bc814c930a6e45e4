package pginbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
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
// key derived from the table's name: concurrent Opens of the same table wait for each other, and
// the lock ends with the transaction (it is never left on a pooled connection).
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
	if err := tx.exec(ctx, `SELECT pg_advisory_xact_lock($1)`, q.lockKey); err != nil {
		return err
	}
	var exists bool
	if err := tx.query(ctx, `SELECT to_regclass($1) IS NOT NULL`, []any{q.schemaT}, func(s scanner) error { return s.Scan(&exists) }); err != nil {
		return err
	}
	if !exists {
		if err := tx.exec(ctx, `CREATE TABLE `+q.schemaT+` (
			version    integer PRIMARY KEY,
			applied_at timestamptz NOT NULL DEFAULT now(),
			note       text NOT NULL
		)`); err != nil {
			return err
		}
	}
	current := 0
	if err := tx.query(ctx, `SELECT coalesce(max(version), 0) FROM `+q.schemaT, nil, func(s scanner) error { return s.Scan(&current) }); err != nil {
		return err
	}
	if current > SchemaVersion {
		return fmt.Errorf("%w: table %s is at schema version %d, this binary knows up to %d", ErrSchemaVersion, q.table, current, SchemaVersion)
	}
	// CREATE INDEX takes no schema: the index goes into its table's.
	index := pgx.Identifier{q.baseName + "_expire_at_idx"}.Sanitize()
	for _, m := range migrations {
		if m.version <= current {
			continue
		}
		for _, stmt := range m.sql {
			if err := tx.exec(ctx, fmt.Sprintf(stmt, q.t, index, q.membersT, q.leasesT)); err != nil {
				return fmt.Errorf("migration %d: %w", m.version, err)
			}
		}
		if err := tx.exec(ctx, `INSERT INTO `+q.schemaT+` (version, note) VALUES ($1, $2)`, m.version, m.note); err != nil {
			return err
		}
		logf("pginbox: migrated", "table", q.table, "version", m.version, "note", m.note)
	}
	return tx.commit(ctx)
}
