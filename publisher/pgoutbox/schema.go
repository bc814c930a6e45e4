package pgoutbox

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/internal/pgmigrate"
)

// steps is the schema's history. Append only: a released step is never changed. %[1]s outbox,
// %[2]s meta, %[3]s counters, %[4]s leases, %[5]s..%[7]s the outbox's indexes, %[8]s commit
// marks, %[9]s their index.
var steps = []struct {
	version int
	note    string
	sql     []string
}{
	{1, "outbox: rows, meta, per-(epoch, stream) counters, relay lease", []string{
		// rid is the relay's id, assigned at read time in (epoch, stream, seq) order; NULL until then.
		`CREATE TABLE %[1]s (
			id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
			rid          bigint,
			epoch        bigint NOT NULL,
			stream       bytea NOT NULL,
			seq          bigint NOT NULL,
			exchange     bytea NOT NULL,
			routing_key  bytea NOT NULL,
			mandatory    boolean NOT NULL,
			props        bytea,
			headers      bytea,
			body         bytea NOT NULL,
			created      timestamptz NOT NULL DEFAULT now(),
			attempts     integer NOT NULL DEFAULT 0,
			last_outcome smallint NOT NULL DEFAULT 0,
			last_error   text NOT NULL DEFAULT '',
			parked       boolean NOT NULL DEFAULT false,
			park_reason  text,
			parked_at    timestamptz
		)`,
		`CREATE INDEX %[5]s ON %[1]s (rid) WHERE rid IS NOT NULL AND NOT parked`,
		`CREATE INDEX %[6]s ON %[1]s (epoch, id) WHERE rid IS NULL AND NOT parked`,
		`CREATE INDEX %[7]s ON %[1]s (id) WHERE parked`,
		`CREATE TABLE %[2]s (
			k         integer PRIMARY KEY CHECK (k = 1),
			source    bytea NOT NULL,
			epoch     bigint NOT NULL,
			sysid     bigint,
			timeline  bigint,
			last_rid  bigint NOT NULL DEFAULT 0,
			bumped_at timestamptz,
			bump_note text
		)`,
		`CREATE TABLE %[3]s (
			epoch  bigint NOT NULL,
			stream bytea NOT NULL,
			next   bigint NOT NULL,
			PRIMARY KEY (epoch, stream)
		)`,
		`CREATE TABLE %[4]s (
			name    text PRIMARY KEY,
			owner   text NOT NULL DEFAULT '',
			expires timestamptz NOT NULL DEFAULT '-infinity'
		)`,
	}},
	// Settle decides by a row the transaction itself wrote: after a crash PostgreSQL can hand a
	// lost transaction's xid to a new one, whose commit pg_xact_status then reports.
	{2, "outbox: commit marks (TxID, Settle)", []string{
		`CREATE TABLE %[8]s (
			mark bytea PRIMARY KEY,
			at   timestamptz NOT NULL DEFAULT now()
		)`,
		`CREATE INDEX %[9]s ON %[8]s (at)`,
	}},
}

// SchemaVersion is the schema version this package migrates to.
var SchemaVersion = steps[len(steps)-1].version

// migrate brings the tables to SchemaVersion in tx (internal/pgmigrate, shared with the inbox).
func migrate(ctx context.Context, tx pgx.Tx, n *names, logf func(string, ...any)) error {
	plan := pgmigrate.Plan{Table: n.table, RecordTable: n.schemaT, LockKey: n.lockKey, ErrNewer: ErrSchemaVersion,
		Log: logf, Prefix: "pgoutbox: "}
	for _, s := range steps {
		st := pgmigrate.Step{Version: s.version, Note: s.note}
		for _, q := range s.sql {
			st.SQL = append(st.SQL, fmt.Sprintf(q, n.t, n.metaT, n.countersT, n.leasesT, n.pendingIdx, n.unassignedIdx, n.parkedIdx, n.marksT, n.marksIdx))
		}
		plan.Steps = append(plan.Steps, st)
	}
	_, _, err := pgmigrate.Apply(ctx, pgxTx{tx}, plan)
	return err
}

// pgxTx is a pgx.Tx as pgmigrate.Tx.
type pgxTx struct{ tx pgx.Tx }

func (t pgxTx) Exec(ctx context.Context, sql string, args ...any) error {
	_, err := t.tx.Exec(ctx, sql, args...)
	return err
}

func (t pgxTx) QueryRow(ctx context.Context, sql string, args []any, dest ...any) error {
	return t.tx.QueryRow(ctx, sql, args...).Scan(dest...)
}
